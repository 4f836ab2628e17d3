"""What every objective is: its loss config and the `Objective` record the trainer and the
data pipeline take."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class LossConfig:
  label_smoothing: float = 0.0
  z_loss: float = 0.0


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str
  loss: Callable  # (model, params, batch, rng, deterministic, LossConfig) -> sums
  window_length: Callable[[int], int]  # seq_len -> tokens taken from the stream per example
  # record, rng -> numpy example; the record is a window of the token stream, or for
  # `pairs_per_example` > 0 a list of that many (source ids, target ids) pairs.
  example: Callable[[object, np.random.Generator], dict]
  target_len: int = 0  # decoder tokens per example (encoder-decoder objectives)
  partner_window: bool = False  # records are (window, a random other window) pairs (NSP)
  pairs_per_example: int = 0  # > 0: trains on parallel text, this many pairs packed per row
