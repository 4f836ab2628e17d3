"""Optimizer and learning-rate schedules (Optax).

AdamW (Loshchilov & Hutter 2019) with global-norm clipping and a weight-decay mask:
by default only matrices decay; biases, norm scales and embeddings do not (as in GPT-2 /
nanoGPT / MaxText). Gradient accumulation lives in `training.py`, inside the step.
"""

from __future__ import annotations

import dataclasses

import jax
import optax
from flax import traverse_util


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  learning_rate: float = 1e-3
  schedule: str = "cosine"  # cosine | linear | constant
  warmup_steps: int = 100
  decay_steps: int = 1000  # steps from 0 to the end of decay (usually num_train_steps)
  min_learning_rate: float = 0.0
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  decay_embeddings: bool = False
  grad_clip_norm: float = 1.0  # 0 disables clipping


def schedule(c: OptimConfig) -> optax.Schedule:
  """Linear warmup from 0 to learning_rate, then the named decay to min_learning_rate."""
  warmup = optax.linear_schedule(0.0, c.learning_rate, max(c.warmup_steps, 1))
  rest = max(c.decay_steps - c.warmup_steps, 1)
  if c.schedule == "cosine":
    alpha = c.min_learning_rate / c.learning_rate if c.learning_rate else 0.0
    decay = optax.cosine_decay_schedule(c.learning_rate, rest, alpha=alpha)
  elif c.schedule == "linear":
    decay = optax.linear_schedule(c.learning_rate, c.min_learning_rate, rest)
  elif c.schedule == "constant":
    decay = optax.constant_schedule(c.learning_rate)
  else:
    raise ValueError(f"schedule={c.schedule!r}; choose 'cosine', 'linear' or 'constant'")
  if c.warmup_steps <= 0:
    return decay
  return optax.join_schedules([warmup, decay], [c.warmup_steps])


def decay_mask(params, decay_embeddings: bool = False):
  """True for leaves that take weight decay: matrices, and embeddings only if asked."""

  def decays(path, leaf) -> bool:
    del leaf  # by name, not rank: a scanned stack adds a layer axis, attention biases are 2-D
    if path[-1] in ("bias", "scale"):
      return False
    if path[-1] == "embedding" or "embed" in path[-2:]:
      return decay_embeddings
    return True

  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: decays(k, v) for k, v in flat.items()})


def make_optimizer(c: OptimConfig) -> optax.GradientTransformation:
  chain = []
  if c.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(c.grad_clip_norm))
  chain.append(
    optax.adamw(
      schedule(c),
      b1=c.b1,
      b2=c.b2,
      eps=c.eps,
      weight_decay=c.weight_decay,
      mask=lambda params: decay_mask(params, c.decay_embeddings),
    )
  )
  return optax.chain(*chain)


def global_norm(tree) -> jax.Array:
  return optax.global_norm(tree)
