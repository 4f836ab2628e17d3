"""Token-level losses, returned as sums with their weights so that any batching of the
same tokens (microbatches, devices, hosts) divides by the same total.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LossConfig:
  label_smoothing: float = 0.0
  z_loss: float = 0.0


def cross_entropy(
  logits: jax.Array,  # (B, T, V) float32
  targets: jax.Array,  # (B, T) int
  weights: jax.Array,  # (B, T) 0/1: which positions count
  label_smoothing: float = 0.0,
  z_loss: float = 0.0,
) -> dict[str, jax.Array]:
  """Sums of loss (with smoothing and z-loss), plain NLL, correct predictions and weight.

  z-loss (PaLM, Chowdhery et al. 2022) adds z_loss * log(Z)^2 to keep the softmax
  normalizer near 1, which stabilizes bf16 training.
  """
  log_z = jax.nn.logsumexp(logits, axis=-1)  # (B, T)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = log_z - target_logit
  loss = nll
  if label_smoothing:
    # Smoothed target: (1 - eps) on the label, eps spread uniformly over the vocabulary.
    mean_logit = jnp.mean(logits, axis=-1)
    loss = (1.0 - label_smoothing) * nll + label_smoothing * (log_z - mean_logit)
  if z_loss:
    loss = loss + z_loss * jnp.square(log_z)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  w = weights.astype(jnp.float32)
  return {
    "loss_sum": jnp.sum(loss * w),
    "nll_sum": jnp.sum(nll * w),
    "correct_sum": jnp.sum(correct * w),
    "weight_sum": jnp.sum(w),
  }


def sum_to_mean(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """{'loss': loss_sum / weight_sum, 'accuracy': ..., 'nll': ...}; safe when weight is 0."""
  denom = jnp.maximum(sums["weight_sum"], 1.0)
  return {
    "loss": sums["loss_sum"] / denom,
    "nll": sums["nll_sum"] / denom,
    "accuracy": sums["correct_sum"] / denom,
  }
