"""What every fine-tuning task is, and what tasks share.

A task is the unit a user adds (one module and a line in `flaxlm.tasks.TASKS`): how a
record becomes an example (host, NumPy), the model (a backbone from `flaxlm.models` plus a
head), the loss, the predictions the device makes, how they are scored (by the libraries
that define the metrics) and how they become output records. The training loop, the data
pipeline and the entry points know nothing else about it.

Examples are dicts of unpadded 1-D (or (T, C)) arrays; `pad_values` says how each varying
field pads. Every example has `inputs` (token ids) and `segment_ids` (1 on tokens, 0 on
padding) and, for evaluation, `example_weight` (1; 0 on rows that only fill a batch).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from flaxlm.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Columns:
  """Which record fields a task reads (`--config.columns.<name>=<field>`)."""

  text: str = "text"
  text_pair: str = ""  # '' = single texts
  label: str = "label"
  words: str = "words"  # conll: records carry 'words' and 'tags'
  tags: str = "tags"
  word_index: int = 0  # conll: the column holding the word ...
  tag_index: int = -1  # ... and the one holding its tag
  head: str = "head"  # relation: [start, end) character spans of the two entities, or
  tail: str = "tail"  #   '' when the text already marks them (<e1> ... </e1>, <e2> ... </e2>)
  context: str = "context"  # extractive QA
  question: str = "question"
  answers: str = "answers"
  id: str = "id"
  target: str = "target"  # seq2seq: one column, or several comma-separated (references)
  prompt: str = "prompt"  # instruction tuning
  response: str = "response"
  messages: str = ""  # chat turns [{'role', 'content'}] (instead of prompt / response)


class Task:
  """Base of the task classes; see the module docstring for the contract."""

  name: ClassVar[str]
  Config: ClassVar[type]  # the frozen dataclass of the config's `task` block
  metric: ClassVar[str]  # the default early-stopping metric (an eval_ key)
  metric_mode: ClassVar[str] = "max"
  pad_values: ClassVar[dict] = {"inputs": 0, "segment_ids": 0}

  def __init__(self, config, columns: Columns, family, model_config, tokenizer, labels):
    self.config, self.columns = config, columns
    self.family, self.model_config = family, model_config  # registry.Family, its config
    self.tokenizer, self.labels = tokenizer, labels  # labels: fit_labels' list, or None

  # --- set up ---------------------------------------------------------------------------
  @classmethod
  def metric_for(cls, config) -> str:
    """The default early-stopping metric for a task config."""
    return cls.metric

  @classmethod
  def metric_mode_for(cls, config) -> str:
    return cls.metric_mode

  @classmethod
  def fit_labels(cls, config, columns: Columns, records: list[dict]) -> list[str] | None:
    """The label set, from the training records (saved in every checkpoint)."""
    return None

  def check(self) -> None:
    """Config checks that need the task, family and tokenizer (before any training)."""

  # --- data -------------------------------------------------------------------------------
  def key(self, record: dict):
    """What makes two records duplicates (for cleaning); None keeps every record."""
    return None

  def example(self, record: dict) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def examples(self, record: dict) -> list[dict[str, np.ndarray]]:
    """The examples of one record: one, or several for a long text cut into windows (QA).
    Predictions of a record's examples come back together (`predictions['record']`)."""
    return [self.example(record)]

  def tokens_per_example(self, example: dict) -> int:
    return int(np.sum(example["segment_ids"] > 0))

  # Training rows made of several examples (packing: SFT, seq2seq): `group` examples in, one
  # row out; the loop then trains on rows, and evaluation still reads examples one by one.
  group: int = 1

  def pack(self, examples: list[dict]) -> dict:
    raise NotImplementedError

  def train_collate(self, row_multiple: int, microbatches: int = 1):
    """How a step's examples become its training batch when the task lays rows out itself
    (padding-free classification), with rows a multiple of `row_multiple`, laid out for
    `microbatches` (accum_steps); None pads each example (or packed group) to a row of its
    own."""
    return None

  # --- model ------------------------------------------------------------------------------
  def model(self, backbone):
    raise NotImplementedError

  def loss(self, model, params, batch, rng, deterministic: bool, loss_config):
    raise NotImplementedError

  def predict(self, model, params, batch) -> dict:
    """Per-row predictions (device arrays), for `score` and `outputs`."""
    raise NotImplementedError

  # --- results ----------------------------------------------------------------------------
  def score(self, predictions: dict, records: list[dict]) -> dict:
    """Metrics (without the eval_ prefix) from the predictions of `records`, by library."""
    raise NotImplementedError

  def outputs(self, predictions: dict, records: list[dict]) -> list[dict]:
    """One JSON-able object per record for `finetune.py --mode=predict`."""
    raise NotImplementedError


def config_from_block(task_cls, fields: dict):
  """The task's config dataclass from the config's `task` block, naming bad keys."""
  known = {f.name for f in dataclasses.fields(task_cls.Config)}
  unknown = sorted(set(fields) - known - {"name"})
  if unknown:
    raise ConfigError(
      f"config.task has keys {unknown} that task {task_cls.name!r} does not know; valid keys: "
      f"{sorted(known)}"
    )
  try:
    return task_cls.Config(**{k: v for k, v in fields.items() if k != "name"})
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.task: {e}") from None


def encode_inputs(tokenizer, text: str, pair: str | None, max_len: int, chars: int = 0) -> dict:
  """One text (or a text pair) as model inputs, truncated longest-first to max_len tokens.

  With [CLS] and [SEP] reserved (BERT): [CLS] a [SEP] (b [SEP]) and type_ids 0 / 1. Otherwise
  a (SEP-or-EOS b) then EOS when the tokenizer has one, so a decoder's last token marks the
  end. `chars` > 0 adds each token's character ids (word tokenizer; the LSTM's char CNN)."""
  ids = tokenizer.special_ids

  def pieces(t: str) -> list[tuple[int, str]]:  # (token id, its surface word, for chars)
    if chars:
      words = tokenizer.split(t)
      return list(zip(tokenizer.encode_words(words), words, strict=True))
    return [(i, "") for i in tokenizer.encode(t)]

  a, b = pieces(text), pieces(pair) if pair is not None else []
  special = lambda name: [(ids[name], "")] if ids.get(name) is not None else []
  if "cls" in ids and "sep" in ids:  # [CLS] a [SEP] (b [SEP])
    head, after_a, after_b = special("cls"), special("sep"), special("sep")
  else:  # a (JOIN b) EOS, JOIN being [SEP] or EOS
    head, after_b = [], special("eos")
    after_a = (special("sep") or special("eos")) if pair is not None else special("eos")
  if pair is None:
    after_b = []
  a, b = truncate_longest_first(a, b, max_len - len(head) - len(after_a) - len(after_b))
  first, second = head + a + after_a, (b + after_b if pair is not None else [])
  tokens = first + second
  out = {
    "inputs": np.asarray([i for i, _ in tokens], np.int32),
    "segment_ids": np.ones(len(tokens), np.int32),
    "type_ids": np.asarray([0] * len(first) + [1] * len(second), np.int32),
  }
  if chars:
    out["chars"] = tokenizer.char_ids([w for _, w in tokens], chars)
  return out


def truncate_longest_first(a: list, b: list, budget: int) -> tuple[list, list]:
  """Drops tokens from the end of the longer of a and b until both fit in `budget`."""
  a, b = list(a), list(b)
  while len(a) + len(b) > max(budget, 0):
    if len(a) >= len(b):
      a.pop()
    else:
      b.pop()
  return a, b


def prefixed(metrics: dict, prefix: str = "eval_") -> dict:
  return {prefix + k: v for k, v in metrics.items()}


def pack_examples(examples: list[dict], sides: list[tuple[tuple[str, ...], str, int]]) -> dict:
  """Examples one after another in one row. Each side is (its fields, its segment-id field,
  its length limit): an encoder-decoder row has two, a decoder row one. Example i gets segment
  id i + 1 on every side (its positions restart, as each example made them); the first
  example that no longer fits on some side ends the row, and is left out of it."""
  kept, used = [], [0] * len(sides)
  for e in examples:
    sizes = [len(e[segment]) for _, segment, _ in sides]
    if kept and any(u + n > limit for u, n, (*_, limit) in zip(used, sizes, sides, strict=True)):
      break
    kept.append(e)
    used = [u + n for u, n in zip(used, sizes, strict=True)]
  out = {}
  for fields, segment, _ in sides:
    for f in fields:
      out[f] = np.concatenate([e[f] for e in kept])
    out[segment] = np.concatenate(
      [np.full(len(e[segment]), i + 1, np.int32) for i, e in enumerate(kept)]
    )
  out["example_weight"] = np.float32(1.0)
  return out
