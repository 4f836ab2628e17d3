"""`python -m flaxlm.explain` as users run it, on workdirs: a BERT classifier fine-tuned on an
emulated 2x2x2 mesh (attention PNGs of the stated size, a self-contained head view, token
attributions whose integrated gradients are complete within 1% at 50 steps), a tagger, a
BiLSTM, and a Hugging Face folder whose maps equal transformers' own attentions."""

import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import samples
from conftest import REPO
from PIL import Image

from flaxlm import explain
from flaxlm.config import finetuning as config_finetune
from flaxlm.finetuning import run as finetuning


@pytest.fixture(scope="module")
def bert_workdir(tmp_path_factory) -> str:
  """A 2-block BERT trained on 'good film i' (1) / 'bad film i' (0) on a 2x2x2 mesh."""
  tmp = tmp_path_factory.mktemp("explain_bert")
  c = config_finetune.finetune_config()
  config_finetune.with_model_preset(c, "bert", "bert_tiny")
  c.model.update(num_layers=2, embed_dim=32, num_heads=2, mlp_dim=64, max_len=64)
  c.tokenizer.update(kind="wordpiece", vocab_size=200, special_tokens="bert", lowercase=True)
  c.task = config_finetune.task_block("classification")
  c.task.max_len = 32
  data = samples.good_bad_data(tmp)
  c.train_data = c.eval_data = data[0].split("=", 1)[1]
  c.batch_size = c.eval_batch_size = 16
  c.num_train_steps, c.eval_every, c.checkpoint_every = 40, 40, 40
  c.learning_rate, c.warmup_steps = 3e-3, 0
  c.mesh.update(data=2, fsdp=2, tensor=2)
  workdir = str(tmp / "wd")
  result = finetuning.train(config_finetune.from_config_dict(c), workdir)
  assert result["eval_accuracy"] == 1.0  # it has learned the words that decide
  return workdir


def _cli(*args: str) -> dict:
  proc = subprocess.run(
    [sys.executable, "-m", "flaxlm.explain", *args], cwd=REPO, capture_output=True, text=True,
    timeout=300, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _pngs_have_their_stated_size(folder: pathlib.Path, stated: dict) -> None:
  assert stated
  for name, (width, height) in stated.items():
    with Image.open(folder / name) as image:
      image.load()  # decodes the whole file: a truncated PNG fails here
      assert image.format == "PNG" and image.size == (width, height), name


def _self_contained(page: str) -> None:
  assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "loads from another host"
  assert "@import" not in page and "url(" not in page


def test_attention_command_writes_every_layers_maps_and_a_head_view(bert_workdir, tmp_path):
  out = tmp_path / "maps"
  summary = _cli("attention", f"--workdir={bert_workdir}", "--text=good film 7", f"--out={out}")
  tokens = ["[CLS]", "good", "film", "7", "[SEP]"]
  assert summary["maps"] == {"encoder": [2, 2, len(tokens), len(tokens)]}
  assert set(summary["pngs"]) == {"encoder_layer0.png", "encoder_layer1.png", "encoder_mean.png"}
  _pngs_have_their_stated_size(out, summary["pngs"])
  page = (out / "head_view.html").read_text()
  _self_contained(page)
  assert all(f'"{t}"' in page for t in tokens)
  maps = np.load(out / "maps.npz")["encoder"]
  np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)


def test_attribute_command_explains_the_predicted_class(bert_workdir, tmp_path):
  out = tmp_path / "attr"
  summary = _cli("attribute", f"--workdir={bert_workdir}", "--text=bad film 9", f"--out={out}")
  assert summary["label"] == "0" and summary["tokens"] == ["[CLS]", "bad", "film", "9", "[SEP]"]
  scores = dict(zip(summary["tokens"], summary["scores"], strict=True))
  assert scores["bad"] == max(scores.values()), scores  # the word that decides
  gap = summary["score"] - summary["baseline_score"]
  assert abs(summary["delta"]) <= 0.01 * abs(gap)
  _pngs_have_their_stated_size(out, summary["pngs"])
  _self_contained((out / "attribution.html").read_text())
  assert json.loads((out / "attribution.json").read_text())["scores"] == summary["scores"]


@pytest.mark.parametrize("baseline", ["zeros", "pad"])
def test_integrated_gradients_are_complete_within_one_percent_at_50_steps(bert_workdir, baseline):
  subject = explain.load(bert_workdir)
  for text, label in [("good film 3", None), ("bad film", "1")]:
    a = explain.attribute(subject, text, label=label, steps=50, baseline=baseline)
    gap = a.score - a.baseline_score
    assert abs(gap) > 1e-3 and abs(a.delta) <= 0.01 * abs(gap), (text, label, a.delta, gap)
  g = explain.attribute(subject, "good film 3", method="gradient_x_input")
  assert g.steps == 1 and g.scores.shape == (5,)


@pytest.mark.slow
def test_a_tagger_and_a_bilstm_are_explained(tmp_path):
  tagger = samples.run_config(tmp_path, "token_gpt", num_train_steps=4)
  finetuning.train(config_finetune.from_config_dict(tagger), tmp_path / "tagger")
  subject = explain.load(str(tmp_path / "tagger"))
  words = " ".join(samples.NER_WORDS)
  a = explain.attribute(subject, words, word=2)
  assert a.word == 2 and len(a.scores) == len(a.tokens)
  assert abs(a.delta) <= 0.01 * abs(a.score - a.baseline_score)
  maps = explain.attention_maps(subject, words)
  assert np.all(np.triu(maps.maps["decoder"], k=1) == 0.0)

  c = samples.lstm_config(tmp_path)
  finetuning.train(config_finetune.from_config_dict(c), tmp_path / "lstm")
  lstm = explain.load(str(tmp_path / "lstm"))
  a = explain.attribute(lstm, "good film great actor")
  assert abs(a.delta) <= 0.01 * abs(a.score - a.baseline_score)
  with pytest.raises(Exception, match="no attention layers"):
    explain.attention_maps(lstm, "good film")


def test_a_hugging_face_folders_maps_are_transformers_attentions(tmp_path):
  import hf_tiny
  import torch
  import transformers

  folder = tmp_path / "bert"
  folder.mkdir()
  hf_tiny.bert_with_vocab(folder, ["the cat sat on the mat", "a dog ran in the park"] * 20)
  subject = explain.load(f"hf:{folder}")
  maps = explain.attention_maps(subject, "the cat ran")
  ids = subject.tokenizer.encode("the cat ran")
  cls, sep = (subject.tokenizer.special_ids[k] for k in ("cls", "sep"))
  model = transformers.BertModel.from_pretrained(folder, attn_implementation="eager").eval()
  with torch.no_grad():
    out = model(torch.tensor([[cls, *ids, sep]]), output_attentions=True)
  theirs = np.stack([a[0].numpy() for a in out.attentions])  # (L, N, T, T)
  np.testing.assert_allclose(maps.maps["encoder"], theirs, atol=1e-5)
