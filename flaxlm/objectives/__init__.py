"""Pretraining objectives: how a record of the corpus becomes an example (host, numpy) and
how a batch of examples becomes loss sums (device).

  causal_lm        next-token prediction (GPT)                      causal.py
  mlm, mlm_nsp     masked LM (RoBERTa); + next-sentence pred. (BERT)  masked.py
  span_corruption  T5 span corruption of plain text                 text_to_text.py
  seq2seq          supervised (source, target) pairs, e.g. translation  text_to_text.py

An objective's `loss` is `fn(model, params, batch, rng, deterministic, loss_config) -> sums`,
where `sums` are the token-summed quantities of `losses.cross_entropy`; `rng` (dropout) is
`fold_in(seed, step)`. Its `example(record, rng)` runs in the Grain pipeline with a NumPy
generator that Grain derives from (seed, position in the stream): masks and spans are fresh
each time a sequence comes round again (RoBERTa's dynamic masking), a resumed run draws
exactly the same ones, and the eval set's are fixed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping

from flaxlm.errors import ConfigError
from flaxlm.objectives.base import LossConfig, Objective
from flaxlm.objectives.causal import causal_lm, causal_lm_objective
from flaxlm.objectives.masked import (
  MaskingConfig,
  masked_lm,
  masked_lm_nsp,
  masked_lm_objective,
)
from flaxlm.objectives.text_to_text import (
  SpanCorruptionConfig,
  seq2seq,
  span_corruption_objective,
  translation_objective,
)

__all__ = [
  "OBJECTIVES",
  "LossConfig",
  "MaskingConfig",
  "Objective",
  "ObjectiveEntry",
  "SpanCorruptionConfig",
  "check_objective",
  "entry",
  "make_objective",
  "register",
  "with_heads",
]


@dataclasses.dataclass(frozen=True)
class ObjectiveEntry:
  """What pretraining needs to know of an objective, declared in one place: its loss (all a
  restored model needs; no tokenizer), how it builds its `Objective` from a tokenizer and
  options, the special tokens the tokenizer must reserve (and the config change that does),
  the model fields it brings (its head: NSP brings the NSP classifier), and what a run prints
  when it ends ('sample', 'example', 'masked': `pretraining.REPORTS`)."""

  name: str
  loss: Callable
  build: Callable[..., Objective]  # (tokenizer, **options) -> Objective
  tokens: tuple[str, ...] = ()
  tokens_fix: str = ""
  model_fields: Mapping = dataclasses.field(default_factory=dict)
  report: str = "sample"


OBJECTIVES: dict[str, ObjectiveEntry] = {}


def register(objective: ObjectiveEntry) -> ObjectiveEntry:
  """Adds an objective (a module of its own may register one: a line, no other file)."""
  OBJECTIVES[objective.name] = objective
  return objective


BERT_TOKENS = (("cls", "sep", "mask"), "--config.tokenizer.special_tokens=bert")
for _entry in (
  ObjectiveEntry("causal_lm", causal_lm, causal_lm_objective),
  ObjectiveEntry("mlm", masked_lm, masked_lm_objective, *BERT_TOKENS, report="masked"),
  ObjectiveEntry(
    "mlm_nsp", masked_lm_nsp, functools.partial(masked_lm_objective, nsp=True), *BERT_TOKENS,
    model_fields={"nsp_head": True}, report="masked",
  ),
  ObjectiveEntry(
    "span_corruption", seq2seq, span_corruption_objective, ("eos", "pad", "sentinel_0"),
    "--config.tokenizer.kind=sentencepiece --config.tokenizer.special_tokens=t5",
    report="example",
  ),
  ObjectiveEntry(
    "seq2seq", seq2seq, translation_objective, ("eos", "pad"),
    "--config.tokenizer.special_tokens='' or t5 (or kind=byte)", report="example",
  ),
):  # fmt: skip
  register(_entry)


def entry(name: str) -> ObjectiveEntry:
  if name not in OBJECTIVES:
    raise ConfigError(f"objective {name!r} is unknown; known: {sorted(OBJECTIVES)}")
  return OBJECTIVES[name]


def check_objective(name: str) -> None:
  entry(name)


def with_heads(name: str, model_config):
  """`model_config` with the heads objective `name` trains switched on."""
  fields = OBJECTIVES[name].model_fields if name in OBJECTIVES else {}
  needs = {k: v for k, v in fields.items() if getattr(model_config, k, v) != v}
  return dataclasses.replace(model_config, **needs) if needs else model_config


def make_objective(name: str, tokenizer=None, **options) -> Objective:
  """options: seq_len, masking (mlm), spans (span_corruption), target_len and
  pairs_per_example (seq2seq); each objective takes what it needs."""
  return entry(name).build(tokenizer, **options)
