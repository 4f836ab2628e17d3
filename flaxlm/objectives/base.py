"""What every objective is: the `Objective` record that pretraining hands the data pipeline
(how the corpus becomes records and a record an example) and the loop (the loss)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from flaxlm.data.corpus import Pairs, Windows, WithPartner
from flaxlm.errors import ConfigError, DataError
from flaxlm.nn.losses import LossConfig  # noqa: F401 - objectives' losses take it


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str
  loss: Callable  # (model, params, batch, rng, deterministic, LossConfig) -> sums
  # (tokenized split, DataConfig, stride) -> random-access records; stride 0 packs windows.
  records: Callable[[object, object, int], Sequence]
  # record, rng -> numpy example; with `group` > 1 the record is a list of that many.
  example: Callable[[object, np.random.Generator], dict]
  target_len: int = 0  # decoder tokens per example (encoder-decoder objectives)
  group: int = 1  # records per example (sentence pairs packed per row)
  trains_on: str = "text"  # 'text' (a token stream) or 'pairs' (parallel text)


def stream_windows(length: Callable[[int], int], partner: bool = False) -> Callable:
  """`records` for objectives over a token stream: windows of length(seq_len) tokens (each
  paired with a random other window for `partner`); stride 0 packs them (consecutive causal
  windows share one token: the last target is the next window's first input)."""

  def records(data, config, stride: int):
    check_corpus(data, config, "text")
    n = length(config.seq_len)
    windows = Windows(data, n, stride or min(n, config.seq_len))
    return WithPartner(windows, config.seed) if partner else windows

  return records


def check_corpus(data, config, trains_on: str) -> None:
  """Fails when the corpus is not what the objective trains on (text vs parallel text)."""
  if (trains_on == "pairs") == isinstance(data, Pairs):
    if isinstance(data, Pairs) and not len(data):
      raise DataError(f"{config.dataset!r}: this split holds no sentence pairs")
    return
  needs = "parallel text (pairs:<src>,<tgt>)" if trains_on == "pairs" else "plain text"
  raise ConfigError(
    f"this objective trains on {needs}, but config.dataset={config.dataset!r} is "
    f"{'parallel text' if isinstance(data, Pairs) else 'plain text'}; set --config.objective "
    "(seq2seq for pairs) or --config.dataset to match"
  )
