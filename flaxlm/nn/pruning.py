"""Pruning during fine-tuning: masks over the projection weights, held in the optimizer state.

Three ways to choose what to zero (`PruneConfig.method`):

  magnitude         each kernel loses its own smallest |w|, to the scheduled sparsity
  global_magnitude  one threshold over every targeted kernel (layers keep different shares)
  n_m               n of every m consecutive weights along the input axis survive (2:4: the
                    pattern sparse tensor cores run); sparsity (m - n) / m, from start_step

Sparsity follows Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3
between start_step t0 and end_step t1, masks recomputed every `every` steps in between and
then held. The masks live in the optimizer state (`prune_updates`, the last link of the
chain), so they are sharded like their kernels, saved in every checkpoint and resumed with
it, and the transformation rewrites each update so that a pruned weight is exactly zero after
every step. Export then writes the zeros as they are.

No JAX pruning library is on the package registry flaxlm installs from (`pip install
jaxpruner` finds no distribution), so this is written here, small.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from flaxlm.errors import ConfigError
from flaxlm.nn import sharding

METHODS = ("", "magnitude", "global_magnitude", "n_m")
Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class PruneConfig:
  method: str = ""  # '' (off) | magnitude | global_magnitude | n_m
  sparsity: float = 0.5  # the final share of zeros (n_m: ignored, it is (m - n) / m)
  initial_sparsity: float = 0.0  # at start_step
  start_step: int = 0  # the first mask update
  end_step: int = 0  # the sparsity reaches `sparsity` here; 0 = two thirds of the run
  every: int = 100  # steps between mask updates
  n_m: str = "2:4"  # method n_m: keep n of every m weights along the input axis
  # Which kernels: a regex over parameter paths ('/'-joined), matched whole; '' = every weight
  # matrix of the backbone (projections of attention and MLP, the pooler), not embeddings,
  # norms, biases or the task head.
  targets: str = ""

  def __post_init__(self):
    if self.method not in METHODS:
      raise ConfigError(
        f"prune.method={self.method!r}; choose one of {list(METHODS[1:])} ('' = no pruning)"
      )
    if not self.method:
      return
    for key in ("sparsity", "initial_sparsity"):
      if not 0.0 <= getattr(self, key) < 1.0:
        raise ConfigError(f"prune.{key}={getattr(self, key)} must be in [0, 1) (a share of zeros)")
    if self.initial_sparsity > self.sparsity:
      raise ConfigError(
        f"prune.initial_sparsity={self.initial_sparsity} exceeds prune.sparsity={self.sparsity}"
      )
    if self.every < 1 or self.start_step < 0:
      raise ConfigError(f"prune.every={self.every}, prune.start_step={self.start_step}: "
                        "every must be >= 1 and start_step >= 0")  # fmt: skip
    if self.end_step and self.end_step < self.start_step:
      raise ConfigError(
        f"prune.end_step={self.end_step} comes before prune.start_step={self.start_step}"
      )
    _ = self.group  # parses n_m now
    try:
      re.compile(self.targets)
    except re.error as e:
      raise ConfigError(f"prune.targets={self.targets!r} is not a regex: {e}") from None

  @property
  def group(self) -> tuple[int, int]:
    """(n, m) of n_m."""
    try:
      n, m = (int(x) for x in self.n_m.split(":"))
    except ValueError:
      n = m = 0
    if not 0 < n < m:
      raise ConfigError(f"prune.n_m={self.n_m!r}; use 'n:m' with 0 < n < m, e.g. '2:4'")
    return n, m

  @property
  def final_sparsity(self) -> float:
    n, m = self.group
    return (m - n) / m if self.method == "n_m" else self.sparsity

  def resolved(self, num_train_steps: int) -> PruneConfig:
    """end_step 0 -> two thirds of the run (the rest fine-tunes at the final sparsity)."""
    if not self.method or self.end_step:
      return self
    return dataclasses.replace(self, end_step=max(self.start_step, 2 * num_train_steps // 3))


def sparsity_at(c: PruneConfig, step):
  """Zhu & Gupta's cubic schedule: the share of zeros the masks hold after `step`."""
  if c.method == "n_m":
    return jnp.where(step >= c.start_step, c.final_sparsity, 0.0)
  span = max(c.end_step - c.start_step, 1)
  done = jnp.clip((step - c.start_step) / span, 0.0, 1.0)
  s = c.sparsity + (c.initial_sparsity - c.sparsity) * (1.0 - done) ** 3
  return jnp.where(step >= c.start_step, s, 0.0)


@dataclasses.dataclass(frozen=True)
class Kernel:
  """How to read a targeted kernel: a scanned stack of kernels (a leading 'layers' axis), and
  how many leading dims of each are its input (attention's output: (heads, head_dim, embed))."""

  stacked: bool
  contract: int

  @classmethod
  def of(cls, names: tuple) -> Kernel:
    stacked = bool(names) and names[0] == "layers"
    rest = names[1:] if stacked else names
    return cls(stacked, 2 if rest and rest[0] in ("heads", "kv_heads") else 1)

  def matrices(self, w: jax.Array) -> jax.Array:
    """(layers, in, out): the kernel (or each of a stack) as one input x output matrix."""
    stack = w if self.stacked else w[None]
    fan_in = int(np.prod(stack.shape[1 : 1 + self.contract]))
    return stack.reshape(stack.shape[0], fan_in, -1)


def targets(c: PruneConfig, boxed_params, is_head) -> dict[Path, Kernel]:
  """{path: Kernel} of the kernels `c` prunes, read from the (abstract) boxed parameters:
  their logical axis names give each one's role (`sharding.parameter_role`, what weight
  decay reads too: 'weight' for a weight matrix) and layout."""
  box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  found = {}
  flat = traverse_util.flatten_dict(boxed_params, is_leaf=lambda _, x: box(x))
  for p, leaf in flat.items():
    names = tuple(leaf.names) if box(leaf) else None
    shape = leaf.value.shape if box(leaf) else leaf.shape
    if sharding.parameter_role(names, len(shape)) != "weight":
      continue
    if c.targets and not re.fullmatch(c.targets, "/".join(p)):
      continue
    if not c.targets and is_head(p):
      continue
    found[p] = Kernel.of(names or ())
  if not found:
    raise ConfigError(
      f"prune.targets={c.targets!r} matches no weight matrix of this model; name kernels, e.g. "
      "'.*/(query|key|value|out|wi|wo)/kernel'"
    )
  return dict(sorted(found.items()))


# --- masks ------------------------------------------------------------------------------------


def _kth_smallest(scores: jax.Array, k) -> jax.Array:
  """The k-th smallest (k >= 1) of non-negative float32 scores, exactly: a binary search over
  their bit patterns (ordered as the values are, for x >= 0), 32 counting passes. A sort of
  10M weights takes seconds on CPU; these passes, a fraction of one."""
  bits = jax.lax.bitcast_convert_type(scores.astype(jnp.float32), jnp.uint32)

  def halve(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    enough = jnp.sum(bits <= mid) >= k
    return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

  lo, _ = jax.lax.fori_loop(0, 32, halve, (jnp.uint32(0), jnp.max(bits)))
  return jax.lax.bitcast_convert_type(lo, jnp.float32)


def _keep_largest(scores: jax.Array, sparsity) -> jax.Array:
  """A bool mask of a 1-D array of |w| that drops its floor(sparsity * size) smallest entries:
  everything above the k-th smallest value (exactly k dropped but for ties at it, which the
  magnitudes of trained float weights do not have)."""
  k = jnp.floor(sparsity * scores.size).astype(jnp.int32)
  return (scores > _kth_smallest(scores, jnp.maximum(k, 1))) | (k == 0)


def magnitude_masks(kernels: dict, layouts: dict, sparsity) -> dict:
  """Each kernel (each of a scanned stack) keeps its own largest |w|."""
  out = {}
  for p, w in kernels.items():
    per_layer = layouts[p].matrices(jnp.abs(w.astype(jnp.float32)))
    keep = jax.vmap(lambda m: _keep_largest(m.ravel(), sparsity))(per_layer)
    out[p] = keep.reshape(w.shape)
  return out


def global_magnitude_masks(kernels: dict, sparsity) -> dict:
  """One threshold over every kernel: the floor(sparsity * total) smallest |w| are pruned."""
  paths = list(kernels)
  flat = jnp.concatenate([jnp.abs(kernels[p].astype(jnp.float32)).ravel() for p in paths])
  keep = _keep_largest(flat, sparsity)
  out, start = {}, 0
  for p in paths:
    size = kernels[p].size
    out[p] = keep[start : start + size].reshape(kernels[p].shape)
    start += size
  return out


def n_m_mask(w: jax.Array, layout: Kernel, n: int, m: int) -> jax.Array:
  """n of every m consecutive weights along the (flattened) input axis kept, per output."""
  mats = layout.matrices(jnp.abs(w.astype(jnp.float32)))  # (layers, in, out)
  if mats.shape[1] % m:
    raise ConfigError(
      f"prune.n_m: a kernel of shape {w.shape} has {mats.shape[1]} inputs, not a multiple of "
      f"m={m}; choose another n_m or leave the kernel out of prune.targets"
    )
  groups = mats.reshape(mats.shape[0], mats.shape[1] // m, m, mats.shape[2])
  rank = jnp.argsort(jnp.argsort(-groups, axis=2), axis=2)  # 0: the largest of its group
  return (rank < n).reshape(w.shape)


def masks_for(c: PruneConfig, kernels: dict, layouts: dict, sparsity) -> dict:
  if c.method == "global_magnitude":
    return global_magnitude_masks(kernels, sparsity)
  if c.method == "magnitude":
    return magnitude_masks(kernels, layouts, sparsity)
  n, m = c.group
  return {p: n_m_mask(w, layouts[p], n, m) for p, w in kernels.items()}


# --- the optimizer link -----------------------------------------------------------------------


class PruneState(NamedTuple):
  count: jax.Array  # int32: updates applied so far (the train step)
  masks: Any  # nested dict over the targeted kernels' paths: bool, True = kept


def prune_updates(c: PruneConfig, layouts: dict[Path, Kernel]) -> optax.GradientTransformation:
  """The last link of the optimizer chain: after the mask update due at this step, each
  targeted kernel's update becomes `masked(w + u) - w`, so pruned weights are zero after it.
  `c` has its end_step resolved (PruneConfig.resolved)."""
  paths = list(layouts)

  def init(params):
    flat = traverse_util.flatten_dict(params)
    masks = {p: jnp.ones(flat[p].shape, jnp.bool_) for p in paths}
    return PruneState(jnp.zeros((), jnp.int32), traverse_util.unflatten_dict(masks))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("prune_updates needs the parameters (optax.apply_updates' params)")
    flat_u = traverse_util.flatten_dict(updates)
    flat_p = traverse_util.flatten_dict(params)
    step = state.count
    new = {p: flat_p[p] + flat_u[p] for p in paths}
    due = (step >= c.start_step) & (step <= c.end_step) & ((step - c.start_step) % c.every == 0)
    if c.method == "n_m":  # a fixed pattern: chosen at start_step, from then on held
      due = step == c.start_step
    old = traverse_util.flatten_dict(state.masks)
    rebuilt = lambda: masks_for(c, new, layouts, sparsity_at(c, step))
    masks = jax.lax.cond(due, rebuilt, lambda: {p: old[p] for p in paths})
    for p in paths:
      flat_u[p] = jnp.where(masks[p], new[p], jnp.zeros_like(new[p])) - flat_p[p]
    state = PruneState(step + 1, traverse_util.unflatten_dict(masks))
    return traverse_util.unflatten_dict(flat_u), state

  return optax.GradientTransformation(init, update)


# --- what a run reports -----------------------------------------------------------------------


def pruned_paths(opt_state) -> list[Path]:
  """The kernels an optimizer state's `prune_updates` link masks (its masks' paths)."""
  is_state = lambda x: isinstance(x, PruneState)
  states = [x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)]
  return [p for s in states for p in traverse_util.flatten_dict(s.masks)]


def report(params, paths: list[Path]) -> dict:
  """{'total': share of zeros over the targeted kernels, 'parameters': their count,
  'layers': {'/'-joined path: share of zeros}} of (host or device) parameters."""
  flat = traverse_util.flatten_dict(params)
  layers, zeros, size = {}, 0, 0
  for p in paths:
    w = np.asarray(jax.device_get(flat[p]))
    z = int(np.count_nonzero(w == 0))
    layers["/".join(p)] = z / w.size
    zeros, size = zeros + z, size + w.size
  return {"total": zeros / max(size, 1), "parameters": size, "layers": layers}
