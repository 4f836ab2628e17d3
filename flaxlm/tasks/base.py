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
from flaxlm.models import heads, param_trees


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
  # columns a task registered from outside declares (`Task.own_columns`), as (name, field)
  # pairs; read as attributes like the others
  extra: tuple = ()

  def __getattr__(self, name: str):
    for key, value in object.__getattribute__(self, "extra"):
      if key == name:
        return value
    raise AttributeError(f"Columns has no column {name!r}")

  @classmethod
  def of(cls, fields: dict) -> Columns:
    """Columns from a config's `columns` block (or a saved mapping): the fields above by
    name, the rest (tasks' own columns) as `extra`."""
    known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    extra = {str(k): v for k, v in fields.get("extra", ())}
    extra.update({k: v for k, v in fields.items() if k not in known and k != "extra"})
    given = {k: v for k, v in fields.items() if k in known}
    return cls(**given, extra=tuple(sorted(extra.items())))

  @classmethod
  def defaults(cls, tasks) -> dict:
    """The `columns` config block: these fields and every task's own columns."""
    block = {f.name: f.default for f in dataclasses.fields(cls) if f.name != "extra"}
    for task in tasks:
      block.update(task.own_columns)
    return block


@dataclasses.dataclass(frozen=True)
class Bound:
  """The values a task config field may take: [low, high], or [low, high) with `open_high`."""

  low: float | None = None
  high: float | None = None
  open_high: bool = False
  why: str = ""  # what the field is, for the message

  def check(self, name: str, value) -> None:
    too_low = self.low is not None and value < self.low
    too_high = self.high is not None and (
      value >= self.high if self.open_high else value > self.high
    )
    if not (too_low or too_high):
      return
    if self.high is None:
      rule = f"must be at least {self.low}"
    elif self.low is None:
      rule = f"must be at most {self.high}"
    else:
      rule = f"must be in [{self.low}, {self.high}{')' if self.open_high else ']'}"
    raise ConfigError(f"task.{name}={value!r} {rule} ({self.why}); --config.task.{name}=<value>")


def bounded(default, low=None, high=None, *, open_high: bool = False, why: str = ""):
  """A task config field with its bound, checked when the config is built (before any data is
  read): `max_len: int = bounded(128, 1, why='tokens per example')`."""
  return dataclasses.field(default=default, metadata={"bound": Bound(low, high, open_high, why)})


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """Base of the task config dataclasses: checks every `bounded` field. Subclasses that add
  checks of their own call `super().__post_init__()`."""

  def __post_init__(self):
    for f in dataclasses.fields(self):
      if "bound" in f.metadata:
        f.metadata["bound"].check(f.name, getattr(self, f.name))


class Task:
  """Base of the task classes; see the module docstring for the contract."""

  name: ClassVar[str]
  Config: ClassVar[type]  # the frozen dataclass of the config's `task` block
  metric: ClassVar[str]  # the default early-stopping metric (an eval_ key)
  metric_mode: ClassVar[str] = "max"
  # Record fields the task reads beyond `Columns`'s, with their default names (a task added
  # from outside declares its own here; they join the config's `columns` block).
  own_columns: ClassVar[dict[str, str]] = {}
  # The head the task puts on its backbone ('sequence' | 'token' | 'span'), or None: it
  # trains the family's own language-model head (flaxlm.models.param_trees).
  head_kind: ClassVar[str | None] = None
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
  def head_for(cls, family) -> str | None:
    """The head kind on a backbone of `family` (a registry.Family)."""
    return cls.head_kind

  @property
  def layout(self) -> param_trees.Layout:
    """Which parameters of this task's model are backbone and head."""
    return param_trees.Layout(self.head_for(self.family))

  @classmethod
  def metric_names(cls, config) -> tuple[str, ...]:
    """The scalar metrics an evaluation reports for a task config, without the eval_ prefix
    (what early_stopping.metric may name); every task reports its loss."""
    return ("loss",)

  @classmethod
  def fit_labels(cls, config, columns: Columns, records: list[dict]) -> list[str] | None:
    """The label set, from the training records (saved in every checkpoint)."""
    return None

  @classmethod
  def stratum(cls, config, columns: Columns, record: dict) -> str | None:
    """What k-fold splits keep in proportion (a single label), or None: plain folds."""
    return None

  def check(self) -> None:
    """Config checks that need the task, family and tokenizer (before any training)."""

  def check_room(self, name: str, specials: int, what: str = "special tokens") -> None:
    """`task.<name>` holds `specials` tokens the task adds plus at least one token of text."""
    value = getattr(self.config, name)
    if value < specials + 1:
      raise ConfigError(
        f"task.{name}={value} leaves no room for text: it must hold the task's {specials} "
        f"{what} plus at least one token; use --config.task.{name}={specials + 1} or more"
      )

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

  # Whether throughput is reported in tokens per second (a task over words: NER); else
  # examples per second only.
  reports_tokens: ClassVar[bool] = False

  def init_batch(self, batch_size: int) -> tuple:
    """Inputs that trace the task's model for `init` (a head on a backbone reads a batch
    dict; a text-writing backbone, token ids)."""
    if self.head_for(self.family):
      return (heads.dummy_batch(batch_size, 8, getattr(self, "chars", 0)),)
    return (np.zeros((batch_size, 8), np.int32),)

  def tokens_per_example(self, example: dict) -> int:
    """Input tokens (an encoder-decoder example's source side: `input_segments`)."""
    segments = example["segment_ids"] if "segment_ids" in example else example["input_segments"]
    return int(np.sum(segments > 0))

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

  # Distillation (flaxlm/finetuning/distill.py) reads a task whose loss is a cross-entropy over
  # its head's classes as `forward` then `loss_from_logits`, and matches the student's class
  # distributions to the teacher's at the positions `soft_target_weights` weighs.
  def distillable(self) -> bool:
    return False

  def forward(self, model, params, batch, rng, deterministic: bool, capture=None):
    """The head's logits: (B, C) for a sequence, (B, T, C) for tokens; with `capture` (a
    Flax `capture_intermediates` filter), (logits, the captured intermediates)."""
    rngs = None if deterministic else {"dropout": rng}
    if capture is None:
      return model.apply({"params": params}, batch, deterministic=deterministic, rngs=rngs)
    logits, state = model.apply(
      {"params": params}, batch, deterministic=deterministic, rngs=rngs,
      capture_intermediates=capture, mutable=["intermediates"],
    )  # fmt: skip
    return logits, state["intermediates"]

  def loss_from_logits(self, logits, batch, loss_config) -> dict:
    raise NotImplementedError

  def soft_target_weights(self, batch):
    """The weight of each position of `forward`'s logits (without the class axis)."""
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
  except ConfigError:  # a field's own check: it names the field
    raise
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


def encode_batch(
  tokenizer, texts: list[str], pairs: list[str] | None = None, max_len: int = 512
) -> dict:
  """Texts (or text pairs) framed as `encode_inputs` frames them, padded to the longest:
  {'inputs', 'segment_ids' (1 on tokens, 0 on padding: the attention mask), 'type_ids'},
  each (B, T) int32."""
  if pairs is not None and len(pairs) != len(texts):
    raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
  from flaxlm.data import pipeline  # Grain loads with the first batch, not with the config

  rows = [encode_inputs(tokenizer, t, None if pairs is None else pairs[i], max_len)
          for i, t in enumerate(texts)]  # fmt: skip
  pads = {"inputs": getattr(tokenizer, "pad_id", None) or 0, "segment_ids": 0, "type_ids": 0}
  longest = max(len(r["inputs"]) for r in rows)  # no bucketing: as transformers pads
  return pipeline.pad_collate(pads, multiple=1, max_width=longest)(rows)


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
