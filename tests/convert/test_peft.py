"""LoRA runs hand their adapters to Hugging Face peft and take peft's back
(flaxlm/convert/peft.py); their checkpoints hold the adapters and head, and name their base
(flaxlm/finetuning/frozen_base.py)."""

import json

import numpy as np
import pytest
from hf_tiny import ATOL, bert_with_vocab, max_diff, torch, transformers
from samples import lstm_config, sentiment_rows

from flaxlm.config import finetuning as config_finetune
from flaxlm.convert import files
from flaxlm.convert.__main__ import main
from flaxlm.errors import CheckpointMismatchError, ConfigError
from flaxlm.finetuning import load as finetuned
from flaxlm.finetuning import run as finetuning
from flaxlm.tasks.base import encode_inputs

peft = pytest.importorskip("peft")


def lora_run(tmp_path, source, workdir, **keys):
  c = lstm_config(tmp_path, num_train_steps=6, eval_every=3, checkpoint_every=3)
  c.init_from = f"hf:{source}"
  c.model = config_finetune.runtime_model_block()
  c.task.max_len = 32
  c.lora.update(rank=2, alpha=4.0, targets=".*/(query|value)")
  c.update(keys)
  return finetuning.train(config_finetune.from_config_dict(c), workdir)["model"]


def logits(model, texts):
  out = []
  for text in texts:
    example = encode_inputs(model.tokenizer, text, None, 32)
    batch = {k: example[k][None] for k in ("inputs", "segment_ids", "type_ids")}
    out.append(np.asarray(model.trainable.model.apply({"params": model.params}, batch))[0])
  return np.stack(out)


@pytest.mark.slow
def test_peft_loads_our_adapters_and_we_load_peft_s(tmp_path):
  texts = [t for _, t in sentiment_rows(64, 2)]
  source = tmp_path / "hf_bert"
  bert_with_vocab(source, texts)
  lora_run(tmp_path, source, tmp_path / "workdir")
  model = finetuned.load(tmp_path / "workdir")  # its best checkpoint, as export reads it
  ours = logits(model, texts[:4])

  # The CLI writes peft's folder; peft puts it on the base transformers loads: same logits.
  main(["export", str(tmp_path / "workdir"), str(tmp_path / "adapters"), "--adapters"])
  config = json.loads((tmp_path / "adapters" / "adapter_config.json").read_text())
  assert config["r"] == 2 and config["task_type"] == "SEQ_CLS"
  assert len(config["target_modules"]) == 4  # query and value of two layers
  base = transformers.BertForSequenceClassification.from_pretrained(source, num_labels=2)
  hf = peft.PeftModel.from_pretrained(base, tmp_path / "adapters").eval()
  ids = [encode_inputs(model.tokenizer, t, None, 32)["inputs"] for t in texts[:4]]
  theirs = np.stack([hf(input_ids=torch.tensor(i[None])).logits[0].detach() for i in ids])
  assert max_diff(ours, theirs) <= ATOL
  stored = files.read_tensors(tmp_path / "adapters" / "adapter_model.safetensors")
  assert len(stored) == 4 * 2 + 2  # A and B of 4 projections; the classifier (pooler frozen)

  # Back through adapters_from (learning rate 0: the imported adapters, untouched).
  back = lora_run(tmp_path, source, tmp_path / "again", learning_rate=0.0,
                  adapters_from=f"hf:{tmp_path / 'adapters'}", lora={"rank": 0})  # fmt: skip
  assert back.lora.rank == 2 and back.lora.alpha == 4.0
  np.testing.assert_allclose(logits(back, texts[:4]), ours, atol=1e-5)

  # The checkpoint holds the adapters and the head, not the base; it names the base, and a
  # base that has changed since is refused with both fingerprints.
  checkpoint = tmp_path / "workdir" / "checkpoints"
  meta = json.loads(next(checkpoint.glob("*/meta/metadata")).read_text())
  assert meta["base"]["init_from"] == f"hf:{source}"
  weights = files.read_tensors(source / "model.safetensors")
  weights["bert.embeddings.word_embeddings.weight"] += 0.01
  files.write_model(source, files.read_config(source), weights)
  with pytest.raises(CheckpointMismatchError, match="whose weights have changed"):
    finetuned.load(tmp_path / "workdir")


def test_adapters_from_refuses_lora_keys_and_a_missing_folder(tmp_path):
  c = config_finetune.finetune_config()
  c.adapters_from, c.lora.rank = f"hf:{tmp_path}", 4
  with pytest.raises(ConfigError, match="leave lora.rank at 0"):
    config_finetune.from_config_dict(c)
  c = lstm_config(tmp_path, num_train_steps=1)
  c.adapters_from = f"hf:{tmp_path / 'none'}"
  with pytest.raises(Exception, match="holds no adapter_config.json"):
    finetuning.train(config_finetune.from_config_dict(c), tmp_path / "w")


def test_a_lora_checkpoint_holds_only_what_trains(tmp_path, monkeypatch):
  """A LoRA run's step folders hold its adapters and head (and their optimizer state); the
  frozen base comes back from the seeded init it names, equal to training's."""
  from samples import run_config, trained_from

  c = run_config(tmp_path, "token_gpt")
  c.lora.update(rank=2, alpha=4.0)
  _, model = trained_from(c, tmp_path / "workdir", monkeypatch)
  reloaded = finetuned.load(tmp_path / "workdir")
  for a, b in zip(
    *(jax_leaves(m.params) for m in (model, reloaded)), strict=True
  ):  # the frozen base rebuilt bit for bit, the trained parameters restored
    np.testing.assert_array_equal(a, b)
  saved = tmp_path / "workdir" / "checkpoints"
  step = sorted(saved.iterdir())[-1]
  tree = json.loads((step / "state" / "_METADATA").read_text())["tree_metadata"]
  names = {k for k in tree if "'params'" in k}
  assert names and all("lora" in k or "classifier" in k for k in names), sorted(names)[:4]


def jax_leaves(tree):
  import jax

  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]
