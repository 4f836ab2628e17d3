"""Sequence-to-sequence and instruction tuning (flaxlm/tasks/seq2seq.py, sft.py), generation
metrics with several references, and k-fold cross-validation (flaxlm/finetuning/kfold.py)."""

import json

import numpy as np
import pytest
from samples import files, pairs

from flaxlm.config import finetuning as config_finetune
from flaxlm.data import tokenizers
from flaxlm.finetuning import kfold as cross_validation
from flaxlm.finetuning import load as finetuned
from flaxlm.finetuning import run as finetuning
from flaxlm.models import registry
from flaxlm.tasks import Columns, metrics, task_class


def jsonl(tmp, name, rows) -> str:
  return "jsonl:" + files(tmp, name, "".join(json.dumps(r) + "\n" for r in rows))


def byte_tokenizer():
  return tokenizers.train_tokenizer(tokenizers.TokenizerConfig(kind="byte"), [])


def test_sft_learns_only_the_response_and_packs_rows():
  cls = task_class("sft")
  fam = registry.family_of("gpt")
  task = cls(cls.Config(template="Q: {prompt}\nA: ", max_len=64, pack=3), Columns(), fam,
             fam.config_cls(), byte_tokenizer(), None)  # fmt: skip
  record = {"prompt": "hi", "response": "yo", "_where": "t:1"}
  ex = task.example(record)
  prompt = list(b"Q: hi\nA: ")
  assert ex["inputs"].tolist() == prompt + list(b"yo")
  assert ex["targets"].tolist() == prompt[1:] + list(b"yo") + [task.tokenizer.eos_id]
  learned = ex["targets"][ex["weights"] > 0].tolist()
  assert learned == list(b"yo") + [task.tokenizer.eos_id]  # response and EOS, nothing else
  packed = task.pack([ex, task.example({**record, "response": "abc"}), ex])
  n = len(ex["inputs"])
  assert packed["segment_ids"].tolist() == [1] * n + [2] * (n + 1) + [3] * n
  assert packed["positions"][n] == 0 and packed["positions"][-1] == n - 1
  chat = cls(
    cls.Config(), Columns(messages="messages"), fam, fam.config_cls(), byte_tokenizer(), None
  )
  turns = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
  assert chat.source({"messages": turns, "_where": "t:2"}) == "<|user|>\n2+2?\n<|assistant|>\n"
  assert chat.references({"messages": turns, "_where": "t:2"}) == ["4"]


@pytest.mark.parametrize(
  "family, task", [("encdec", "seq2seq"), ("gpt", "seq2seq"), ("gpt", "sft")]
)
def test_training_rows_pack_whole_examples(family, task):
  """The rows the loop trains on hold `task.pack` examples each, every one whole under its own
  segment id on every side (encoder and decoder), positions restarting."""
  cls, fam = task_class(task), registry.family_of(family)
  short = {"template": "{prompt} => "} if task == "sft" else {}
  config = cls.Config(max_len=160, target_len=96, pack=3, **short)  # room for 3 pairs of pairs()
  t = cls(config, Columns(text="source", prompt="source", response="target"), fam,
          fam.config_cls(), byte_tokenizer(), None)  # fmt: skip
  examples = [t.example({**r, "_where": "t:1"}) for r in pairs(30, 0)]
  batch = finetuning.training_rows(t, examples, 4, 0, config.max_len)[0]
  if family == "encdec":
    sides = {
      "input_segments": ("inputs", "input_positions"),
      "decoder_segments": ("targets", "weights", "decoder_positions"),
    }
  else:
    sides = {"segment_ids": ("inputs", "targets", "weights", "positions")}
  for segment, fields in sides.items():
    assert batch[segment].max(axis=1).tolist() == [3] * 4  # three short pairs fit each row
    whole = {tuple(tuple(e[f].tolist()) for f in fields) for e in examples}
    for row, i in [(r, i) for r in range(4) for i in (1, 2, 3)]:
      part = batch[segment][row] == i
      assert tuple(tuple(batch[f][row][part].tolist()) for f in fields) in whole


def test_generation_metrics_take_every_reference():
  import sacrebleu
  from rouge_score import rouge_scorer

  hyps = ["the cat sat on the mat", "a dog ran"]
  refs = [["the cat is on the mat", "a cat sat on a mat"], ["the dog ran home", "a dog ran"]]
  out = metrics.generation(hyps, refs)
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
  for key in ("rouge1", "rouge2", "rougeL"):
    want = np.mean(
      [max(scorer.score(r, h)[key].fmeasure for r in rs) for h, rs in zip(hyps, refs, strict=True)]
    )
    assert out[key] == pytest.approx(want)
  assert out["rouge1"] > metrics.generation(hyps, [[r[0]] for r in refs])["rouge1"]
  bleu = sacrebleu.corpus_bleu(hyps, [[r[0] for r in refs], [r[1] for r in refs]]).score
  assert out["bleu"] == pytest.approx(bleu)


def test_kfold_partitions_and_stratifies():
  c = config_finetune.finetune_config()
  c.train_data = "tsv:/dev/null"
  c.kfold = 4
  ft = config_finetune.from_config_dict(c)
  records = [{"label": "pos" if i % 4 else "neg", "text": str(i)} for i in range(40)]  # 30 / 10
  folds = cross_validation.folds(ft, records)
  held_out = sorted(i for _, test in folds for i in test)
  assert held_out == list(range(40))  # a partition
  for train, test in folds:
    assert not set(train) & set(test)
    assert sum(records[i]["label"] == "neg" for i in test) in (2, 3)  # 10 negatives / 4 folds


def seq2seq_config(tmp, family="encdec", task="seq2seq", **overrides):
  c = config_finetune.finetune_config()
  preset = {"encdec": "t5_tiny", "gpt": "tiny"}[family]
  config_finetune.with_model_preset(c, family, preset)
  c.model.update(num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64, dropout_rate=0.0)
  if family == "encdec":
    c.tokenizer.update(kind="sentencepiece", vocab_size=400, special_tokens="t5")
  else:
    c.tokenizer.kind = "byte"
  c.task = config_finetune.task_block(task)
  c.task.target_len = 16
  if task == "seq2seq":
    c.task.max_len = 32
    c.task.beam_size = 2
    c.columns.text = "source"
  else:
    c.task.max_len = 64
    c.task.template = "{prompt} => "
    c.columns.prompt = "source"
    c.columns.response = "target"
  c.columns.target = "target"
  c.train_data = jsonl(tmp, "train.jsonl", pairs(200, 0))
  c.eval_data = jsonl(tmp, "dev.jsonl", pairs(16, 1))
  c.batch_size = c.eval_batch_size = 16
  c.num_train_steps = 30
  c.learning_rate = 3e-3
  c.warmup_steps = 5
  c.eval_every = 0
  c.checkpoint_every = 0
  c.log_every = 10
  for key, value in overrides.items():
    c[key] = value
  return c


@pytest.mark.parametrize("family, task", [("encdec", "seq2seq"), ("gpt", "sft")])
@pytest.mark.slow  # CI runs it; the default suite stays under 15 minutes
def test_generation_tasks_train_score_and_predict_like_generate(
  family, task, tmp_path, monkeypatch, scripts
):
  """A short run ends with ROUGE / BLEU of generated text, decoded once (the evaluation at the
  last step is the final one); predicting again from the saved workdir writes exactly the
  text the final evaluation scored. The decoder's evaluate / predict take other decoding
  settings: one beam without a length penalty scores as greedy did, and finetune.py
  --mode=predict --no_repeat_ngram=1 writes what the library call writes."""
  c = seq2seq_config(tmp_path, family, task)
  cls, decoded = task_class(task), []
  generate = cls.generate
  monkeypatch.setattr(cls, "generate", lambda *a, **k: decoded.append(1) or generate(*a, **k))
  result = finetuning.train(config_finetune.from_config_dict(c), tmp_path / "workdir")
  assert len(decoded) == 1
  for key in ("eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_bleu", "eval_loss"):
    assert np.isfinite(result[key]), key
  out = tmp_path / "pred.jsonl"
  assert finetuned.predict(tmp_path / "workdir", c.eval_data, str(out)) == 16
  texts = [json.loads(x)["prediction"] for x in out.read_text().splitlines()]
  refs = [[p["target"]] for p in pairs(16, 1)]
  again = metrics.generation(texts, refs)
  assert again["rougeL"] == pytest.approx(result["eval_rougeL"])
  if family != "gpt":
    return
  beam1 = finetuned.evaluate(tmp_path / "workdir", c.eval_data, task={"beam_size": 1, "alpha": 0.0})
  assert beam1["eval_rougeL"] == pytest.approx(result["eval_rougeL"])
  lib, cli = tmp_path / "lib.jsonl", tmp_path / "cli.jsonl"
  finetuned.predict(tmp_path / "workdir", c.eval_data, str(lib), task={"no_repeat_ngram": 1})
  done = scripts.run(
    "finetune.py", f"--workdir={tmp_path / 'workdir'}", "--mode=predict",
    f"--eval_data={c.eval_data}", f"--output={cli}", "--no_repeat_ngram=1", tiny=False,
  )  # fmt: skip
  assert done.returncode == 0, done.stderr[-3000:]
  unrepeated = [json.loads(x)["prediction"] for x in cli.read_text().splitlines()]
  assert unrepeated == [json.loads(x)["prediction"] for x in lib.read_text().splitlines()]
  assert unrepeated != texts  # the setting took effect: greedy repeats bytes of its words
