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

import functools
from collections.abc import Callable

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
  "LOSSES",
  "OBJECTIVES",
  "LossConfig",
  "MaskingConfig",
  "Objective",
  "SpanCorruptionConfig",
  "check_objective",
  "make_objective",
]

# The loss each objective trains with (all that a restored model needs; no tokenizer).
LOSSES: dict[str, Callable] = {
  "causal_lm": causal_lm,
  "mlm": masked_lm,
  "mlm_nsp": masked_lm_nsp,
  "span_corruption": seq2seq,
  "seq2seq": seq2seq,
}

OBJECTIVES: dict[str, Callable[..., Objective]] = {
  "causal_lm": causal_lm_objective,
  "mlm": masked_lm_objective,
  "mlm_nsp": functools.partial(masked_lm_objective, nsp=True),
  "span_corruption": span_corruption_objective,
  "seq2seq": translation_objective,
}


def check_objective(name: str) -> None:
  if name not in OBJECTIVES:
    raise ConfigError(f"objective {name!r} is unknown; known: {sorted(OBJECTIVES)}")


def make_objective(name: str, tokenizer=None, **options) -> Objective:
  """options: seq_len, masking (mlm), spans (span_corruption), target_len and
  pairs_per_example (seq2seq); each objective takes what it needs."""
  if name not in OBJECTIVES:
    raise ConfigError(f"objective {name!r} is unknown; known: {sorted(OBJECTIVES)}")
  return OBJECTIVES[name](tokenizer, **options)
