"""Token-level losses, returned as sums with their weights so that any batching of the
same tokens (microbatches, devices, hosts) divides by the same total.

`chunked_cross_entropy` is `cross_entropy` of `hidden @ kernel` computed a sequence chunk
at a time, so that the (B, T, V) float32 logits never exist at once (MaxText's vocabulary
tiling); the backward pass recomputes each chunk's logits.
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


def chunked_cross_entropy(
  hidden: jax.Array,  # (B, T, D) final hidden states
  kernel: jax.Array,  # (D, V) output projection
  targets: jax.Array,  # (B, T) int
  weights: jax.Array,  # (B, T)
  num_chunks: int,
  label_smoothing: float = 0.0,
  z_loss: float = 0.0,
) -> dict[str, jax.Array]:
  """`cross_entropy(hidden @ kernel, ...)` over `num_chunks` chunks of the sequence, one
  (B, T / num_chunks, V) block of float32 logits alive at a time, forward and backward.

  A `lax.scan` over the chunks with each chunk rematerialized: the backward pass keeps only
  the chunk's hidden states and recomputes its logits, so peak memory holds one chunk of
  logits and their gradient. Chunks run along the sequence so that every chunk keeps the
  batch's sharding over the data-parallel devices.
  """
  b, t, d = hidden.shape
  if t % num_chunks:
    raise ValueError(f"num_vocab_tiles={num_chunks} must divide the sequence length {t}")
  c = t // num_chunks
  split = lambda x: jnp.swapaxes(x.reshape(b, num_chunks, c, *x.shape[2:]), 0, 1)

  @jax.checkpoint
  def chunk(kernel, h, tgt, w):
    # Matmul in the compute dtype, accumulated and returned in float32.
    logits = jnp.einsum(
      "BCD,DV->BCV", h, kernel.astype(h.dtype), preferred_element_type=jnp.float32
    )
    return cross_entropy(logits, tgt, w, label_smoothing, z_loss)

  def body(total, xs):
    return jax.tree.map(jnp.add, total, chunk(kernel, *xs)), None

  zeros = {
    k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "nll_sum", "correct_sum", "weight_sum")
  }
  sums, _ = jax.lax.scan(body, zeros, (split(hidden), split(targets), split(weights)))
  return sums


def sum_to_mean(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """{'loss': loss_sum / weight_sum, 'accuracy': ..., 'nll': ...}; safe when weight is 0."""
  denom = jnp.maximum(sums["weight_sum"], 1.0)
  return {
    "loss": sums["loss_sum"] / denom,
    "nll": sums["nll_sum"] / denom,
    "accuracy": sums["correct_sum"] / denom,
  }
