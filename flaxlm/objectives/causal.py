"""Next-token prediction (GPT): a window of T + 1 tokens -> inputs and targets (T,)."""

from __future__ import annotations

import numpy as np

from flaxlm.nn import losses, quantize
from flaxlm.objectives.base import LossConfig, Objective, stream_windows


def lm_example(window: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
  """A window of T + 1 tokens -> next-token inputs/targets (T,)."""
  del rng
  return {
    "inputs": window[:-1],
    "targets": window[1:],
    "weights": np.ones(len(window) - 1, np.float32),
  }


def causal_lm(model, params, batch, rng, deterministic: bool, loss: LossConfig):
  """Next-token prediction. batch: inputs, targets, weights (B, T); optional positions,
  segment_ids (B, T) for packed sequences. A model with `num_vocab_tiles` > 1 hands back
  its hidden states and output kernel, and the loss projects them chunk by chunk."""
  tiles = getattr(model.config, "num_vocab_tiles", 1)
  out = model.apply(
    {"params": params},
    batch["inputs"],
    positions=batch.get("positions"),
    segment_ids=batch.get("segment_ids"),
    deterministic=deterministic,
    rngs=None if deterministic else {"dropout": rng},
    **({"output_kernel": True} if tiles > 1 else {}),
  )
  targets, weights = batch["targets"], batch["weights"]
  if tiles > 1:
    hidden, kernel = out  # a QLoRA base's frozen LM head is quantized: float for the chunks
    kernel = quantize.dequantized(kernel)
    return losses.chunked_cross_entropy(
      hidden, kernel, targets, weights, tiles, loss.label_smoothing, loss.z_loss
    )
  return losses.cross_entropy(out, targets, weights, loss.label_smoothing, loss.z_loss)


def causal_lm_objective(tokenizer=None, **_) -> Objective:
  del tokenizer
  return Objective("causal_lm", causal_lm, stream_windows(lambda t: t + 1), lm_example)
