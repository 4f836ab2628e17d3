"""Optimizer and learning-rate schedules (Optax).

AdamW (Loshchilov & Hutter 2019) with global-norm clipping. Weight decay goes by each
parameter's role, read from its logical axis names: weight matrices decay; biases, norm
scales and per-vocabulary biases never do; lookup tables (token, position, type and
relative-position embeddings) only with `decay_embeddings` (GPT-2 / nanoGPT / MaxText).
Layer-wise learning-rate decay (ELECTRA, Clark et al. 2020) scales layer l's updates by
layer_decay ** (L + 1 - l). Gradient accumulation lives in `training.py`, inside the step.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from flaxlm.config import SCHEDULES, OptimConfig  # noqa: F401 (optim.OptimConfig is public)
from flaxlm.nn import sharding


def schedule(c: OptimConfig) -> optax.Schedule:
  """Linear warmup from 0 to learning_rate, then the named decay to min_learning_rate."""
  warmup = optax.linear_schedule(0.0, c.learning_rate, max(c.warmup_steps, 1))
  rest = max(c.decay_steps - c.warmup_steps, 1)
  if c.schedule == "cosine":
    alpha = c.min_learning_rate / c.learning_rate if c.learning_rate else 0.0
    decay = optax.cosine_decay_schedule(c.learning_rate, rest, alpha=alpha)
  elif c.schedule == "linear":
    decay = optax.linear_schedule(c.learning_rate, c.min_learning_rate, rest)
  else:
    decay = optax.constant_schedule(c.learning_rate)
  if c.warmup_steps <= 0:
    return decay
  return optax.join_schedules([warmup, decay], [c.warmup_steps])


def _is_box(x) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def roles(boxed_params) -> dict:
  """The role of every parameter of a tree of (abstract) boxed parameters."""

  def role(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned | nn.Partitioned):
      return sharding.parameter_role(tuple(leaf.names), len(leaf.value.shape))
    return sharding.parameter_role(None, len(leaf.shape))

  return jax.tree.map(role, boxed_params, is_leaf=_is_box)


def decay_mask(boxed_params, decay_embeddings: bool = False):
  """True for the parameters that take weight decay (see the module docstring)."""
  decays = {"weight": True, "embedding": decay_embeddings, "bias": False}
  return jax.tree.map(lambda r: decays[r], roles(boxed_params))


def layer_depths(params) -> dict:
  """Depth of each parameter for layer-wise decay: 0 for the embeddings, l + 1 for block l
  ('layers_l', or a scanned 'layers' stack: a vector over its leading axis), L + 1 for what
  comes after the blocks (final norm, pooler, task heads)."""
  flat = traverse_util.flatten_dict(params)
  numbered = [int(m.group(1)) for k in flat for p in k if (m := re.fullmatch(r"layers_(\d+)", p))]
  scanned = [v.shape[0] for k, v in flat.items() if "layers" in k]
  num_layers = max([n + 1 for n in numbered] + scanned + [0])
  depths = {}
  for path, leaf in flat.items():
    named = [int(m.group(1)) for p in path if (m := re.fullmatch(r"layers_(\d+)", p))]
    if named:
      depths[path] = named[0] + 1
    elif "layers" in path:
      depths[path] = np.arange(1, leaf.shape[0] + 1).reshape((-1,) + (1,) * (leaf.ndim - 1))
    elif any("embed" in p for p in path[-2:]) or "relative_bias" in path:
      depths[path] = 0
    else:
      depths[path] = num_layers + 1
  return traverse_util.unflatten_dict(depths), num_layers


def scale_by_layer(params, layer_decay: float) -> optax.GradientTransformation:
  """Multiplies each update by layer_decay ** (L + 1 - depth)."""
  depths, num_layers = layer_depths(params)
  factors = jax.tree.map(
    lambda d: jnp.asarray(layer_decay ** (num_layers + 1 - np.asarray(d)), jnp.float32), depths
  )

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, f: u * f.astype(u.dtype), updates, factors), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(c: OptimConfig, boxed_params) -> optax.GradientTransformation:
  """AdamW over `boxed_params`' tree (abstract, with logical axis names: they decide decay)."""
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
      mask=decay_mask(boxed_params, c.decay_embeddings),
    )
  )
  if c.layer_decay < 1.0:
    chain.append(scale_by_layer(sharding.strip_axes(boxed_params), c.layer_decay))
  return optax.chain(*chain)


def global_norm(tree) -> jax.Array:
  return optax.global_norm(tree)
