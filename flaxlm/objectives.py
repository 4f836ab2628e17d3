"""Pretraining objectives: how a batch becomes model inputs, targets and loss weights.

An objective is `fn(model, params, batch, rng, deterministic, loss_config) -> sums`, where
`sums` are the token-summed quantities of `losses.cross_entropy`. Any randomness (dropout,
and for masked objectives the mask itself) comes from `rng`, which the step derives from
`fold_in(seed, step)`, so a resumed run sees exactly the same draws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from flaxlm import losses


@dataclasses.dataclass(frozen=True)
class LossConfig:
  label_smoothing: float = 0.0
  z_loss: float = 0.0


def causal_lm(model, params, batch, rng, deterministic: bool, loss: LossConfig):
  """Next-token prediction. batch: inputs, targets, weights (B, T); optional positions,
  segment_ids (B, T) for packed sequences."""
  logits = model.apply(
    {"params": params},
    batch["inputs"],
    positions=batch.get("positions"),
    segment_ids=batch.get("segment_ids"),
    deterministic=deterministic,
    rngs=None if deterministic else {"dropout": rng},
  )
  return losses.cross_entropy(
    logits, batch["targets"], batch["weights"], loss.label_smoothing, loss.z_loss
  )


OBJECTIVES: dict[str, Callable] = {"causal_lm": causal_lm}
