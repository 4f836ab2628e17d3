"""Shared test material: text that ships with CPython, a small SentencePiece model trained on
it (cached for the session), config overrides by dotted key, and what tests in several folders
use: data files, labelled rows, a tiny BiLSTM fine-tuning config and logged metrics."""

import functools
import json
import re
import socket

import jax
import numpy as np

from flaxlm.config import finetuning as config_finetune
from flaxlm.data import sources, tokenizers
from flaxlm.data.tokenizers import TokenizerConfig
from flaxlm.data.tokenizers.sentencepiece import SentencePieceTokenizer


@functools.cache
def training_docs() -> tuple[str, ...]:
  """About 50 kB of English prose and code samples that ship with CPython."""
  return tuple(sources.python_docs()[:12])


@functools.cache
def sentencepiece(model_type: str = "bpe") -> SentencePieceTokenizer:
  config = TokenizerConfig(kind="sentencepiece", vocab_size=400, model_type=model_type)
  return tokenizers.train_tokenizer(config, list(training_docs()))


def set_keys(c, overrides: dict):
  """`c` (a ConfigDict) with `overrides` set: 'key' or 'block.key' (e.g. 'task.max_len')."""
  for key, value in overrides.items():
    block, *rest = key.split(".")
    if rest:
      c[block][rest[0]] = value
    else:
      c[key] = value
  return c


# --- files, labelled rows and logged metrics shared by the test folders ----------------


def files(tmp, name, content: bytes | str) -> str:
  path = tmp / name
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  return str(path)


WORDS = "good bad film plot actor great awful dull fine story scene the a was is".split()


def sentiment_rows(n: int, seed: int) -> list[tuple[int, str]]:
  """Label 1 when 'good' or 'great' occurs, 0 when 'bad' or 'awful' does."""
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    label = i % 2
    cue = rng.choice(["good", "great"] if label else ["bad", "awful"])
    words = list(rng.choice(WORDS[4:], rng.integers(3, 8))) + [cue]
    rng.shuffle(words)
    rows.append((label, " ".join(words)))
  return rows


def tsv(tmp, name, rows) -> str:
  return "tsv:" + files(tmp, name, "label\ttext\n" + "".join(f"{a}\t{b}\n" for a, b in rows))


# A small BERT from scratch, classifying padding-free (a step's examples share rows).
PADDING_FREE_BERT = """
from flaxlm.config.finetuning import finetune_config, task_block, with_model_preset

def get_config():
  c = finetune_config()
  with_model_preset(c, "bert", "bert_tiny")
  c.model.update(num_layers={layers}, embed_dim=32, num_heads=2, mlp_dim=64, max_len=64)
  c.tokenizer.update(kind="wordpiece", vocab_size=200, special_tokens="bert", lowercase=True)
  c.task = task_block("classification")
  c.task.update(max_len=32, padding_free=True)
  return c
"""


def good_bad_data(tmp) -> list[str]:
  """finetune.py's data arguments: 64 rows 'good film i' (1) / 'bad film i' (0), train = dev."""
  text = "".join(f"{i % 2}\t{'good' if i % 2 else 'bad'} film {i}\n" for i in range(64))
  data = "tsv:" + files(tmp, "c.tsv", "label\ttext\n" + text)
  return [f"--config.train_data={data}", f"--config.eval_data={data}", "--config.columns.text=text"]


# Six steps of batch 8 with a checkpoint every 2 and one evaluation at the end.
SIX_STEPS = ["--config.batch_size=8", "--config.eval_batch_size=8", "--config.num_train_steps=6",
             "--config.checkpoint_every=2", "--config.eval_every=6", "--config.log_every=1",
             "--config.learning_rate=1e-3", "--config.warmup_steps=0"]  # fmt: skip


def padding_free_bert(tmp, layers: int = 1) -> list[str]:
  """finetune.py arguments: PADDING_FREE_BERT of `layers` blocks on `good_bad_data`."""
  config = files(tmp, f"bert{layers}.py", PADDING_FREE_BERT.format(layers=layers))
  return [f"--config={config}", *good_bad_data(tmp)]


def lstm_config(tmp, **overrides):
  c = config_finetune.finetune_config()
  config_finetune.with_model_preset(c, "lstm", "bilstm")
  c.model.update(embed_dim=16, hidden_dim=16, dropout_rate=0.0)
  c.tokenizer.kind = "word"
  c.task.dropout_rate = 0.0
  c.train_data = tsv(tmp, "train.tsv", sentiment_rows(256, 0))
  c.eval_data = tsv(tmp, "dev.tsv", sentiment_rows(64, 1))
  c.batch_size = 16
  c.eval_batch_size = 16
  c.num_train_steps = 80
  c.learning_rate = 1e-2
  c.warmup_steps = 0
  c.schedule = "constant"
  c.eval_every = 40
  c.checkpoint_every = 40
  c.log_every = 10
  return set_keys(c, overrides)


class Tok:
  """A tokenizer stand-in: one id per character, BERT's reserved ids."""

  special_ids = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
  eos_id = None

  def encode(self, text):
    return [10 + ord(c) - ord("a") for c in text.replace(" ", "")]


PAIR_WORDS = "red blue green dog cat bird runs sleeps eats big small old".split()


def pairs(n: int, seed: int) -> list[dict]:
  """source: some words; target: the same words reversed (learnable by a tiny model)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    words = list(rng.choice(PAIR_WORDS, rng.integers(2, 5)))
    out.append({"source": " ".join(words), "target": " ".join(words[::-1])})
  return out


COMPARED = ("loss", "grad_norm", "learning_rate", "accuracy", "eval_loss", "eval_accuracy")


def rows(workdir) -> list[dict]:
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


def by_step(workdir) -> dict[int, dict]:
  """The last row logged for each step (a resumed run logs the steps after its checkpoint again)."""
  return {r["step"]: r for r in rows(workdir)}


def max_difference(got: list[dict], want: dict[int, dict]) -> float:
  """Largest |got - want| over the compared metrics of every row in `got`; fails on missing keys."""
  worst = 0.0
  for row in got:
    ref = want[row["step"]]
    assert {k for k in COMPARED if k in row} == {k for k in COMPARED if k in ref}, row["step"]
    for key in COMPARED:
      if key in row:
        worst = max(worst, abs(row[key] - ref[key]))
  return worst


# SIGKILL-resume runs of train.py: frequent checkpoints, and the step a run resumed from.
RESUME = ("--config.num_train_steps=100", "--config.checkpoint_every=5", "--config.eval_every=10")


def resumed_from(stderr: str) -> int:
  match = re.search(r"resumed from step (\d+)", stderr)
  assert match, stderr
  return int(match.group(1))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# --- tiny fine-tuning runs of every task kind (freeze, LoRA, export) ---------------------------------------------------------------

GPT = dict(num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32, max_len=64, tie_embeddings=False)
T5 = dict(num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32, head_dim=8,
          tie_embeddings=False, scale_tied_logits=False)  # fmt: skip
NER_WORDS = ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb"]
TAGS = ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O"]
QA = {"question": "who rejects?", "context": "the EU rejects it", "id": "1",
      "answers": [{"text": "EU", "answer_start": 4}]}  # fmt: skip

# name -> (task, family, model block, records, task fields)
RUNS = {
  "token_gpt": ("token_classification", "gpt", GPT, [{"words": NER_WORDS, "tags": TAGS}] * 16, {"max_len": 32}),
  "qa_gpt": ("qa", "gpt", GPT, [QA] * 16, {"max_len": 48, "doc_stride": 8, "max_question_len": 16}),
  "sft_gpt": ("sft", "gpt", GPT, [{"prompt": "say hi", "response": "hi"}] * 16, {"max_len": 64, "pack": 1, "target_len": 8, "max_new_tokens": 2}),
  "seq2seq_gpt": ("seq2seq", "gpt", GPT, [{"text": "abc", "target": "cba"}] * 16, {"max_len": 16, "target_len": 8, "beam_size": 0, "max_new_tokens": 2}),
  "seq2seq_t5": ("seq2seq", "encdec", T5, [{"text": "abc", "target": "cba"}] * 16, {"max_len": 16, "target_len": 8, "beam_size": 0, "max_new_tokens": 2}),
  "labels_t5": ("classification", "encdec", T5, [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}] * 8, {"max_len": 16}),
}  # fmt: skip


def run_config(tmp, name, **overrides):
  task, family, model, records, fields = RUNS[name]
  c = config_finetune.finetune_config()
  config_finetune.with_model_preset(c, family, "tiny" if family == "gpt" else "t5_tiny")
  c.model.update(model)
  c.tokenizer.kind = "byte"
  c.task = config_finetune.task_block(task)
  c.task.update(fields)
  path = tmp / f"{name}.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  c.train_data = c.eval_data = f"jsonl:{path}"
  c.max_eval_examples = 8
  c.batch_size = c.eval_batch_size = 8
  c.learning_rate, c.warmup_steps = 1e-2, 0
  c.num_train_steps, c.eval_every, c.checkpoint_every = 2, 0, 2
  c.update(overrides)
  return c


def trained_from(c, workdir, monkeypatch) -> tuple[dict, object]:
  """(the parameters training started from, on the host; the fine-tuned model) of a run of
  config `c` (what a test of frozen parameters compares)."""
  from flaxlm.finetuning import run as finetuning
  from flaxlm.train.steps import Trainable

  seen, real = {}, Trainable.init_state

  def spy(self, seed, overrides=None):
    seen["init"] = jax.device_get((state := real(self, seed, overrides)).params)
    return state

  monkeypatch.setattr(Trainable, "init_state", spy)
  model = finetuning.train(config_finetune.from_config_dict(c), workdir)["model"]
  return seen["init"], model
