"""Train state and the pure, jit-compiled train and eval steps.

The state is created directly sharded: `jax.eval_shape` gives the abstract state, logical
axis names give its shardings, and `jit(init, out_shardings=...)` materializes each shard
on its own device. Steps are jitted with in/out shardings and donate the old state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flaxlm import optim, sharding
from flaxlm.objectives import LossConfig


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar
  params: Any
  opt_state: Any
  rng: jax.Array  # raw uint32[2] key; per-step keys are fold_in(rng, step)


@dataclasses.dataclass(frozen=True)
class StepConfig:
  accum_steps: int = 1
  loss: LossConfig = LossConfig()


def init_inputs(batch_size: int, seq_len: int) -> jax.Array:
  return jnp.zeros((batch_size, seq_len), jnp.int32)


def _opt_state_shardings(abstract_opt_state, param_shardings, mesh: Mesh):
  """Optimizer leaves mirroring a parameter (Adam's mu, nu) take that parameter's sharding."""
  by_path = {}
  for path, s in jax.tree_util.tree_leaves_with_path(param_shardings):
    by_path[tuple(str(k) for k in path)] = s

  def pick(path, leaf):
    keys = tuple(str(k) for k in path)
    for start in range(len(keys)):
      s = by_path.get(keys[start:])
      if s is not None:
        return s
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


@dataclasses.dataclass
class Trainable:
  """A model with its optimizer, mesh and sharded state layout; owns the jitted steps."""

  model: nn.Module
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  mesh: Mesh
  rules: tuple
  objective: Callable
  step_config: StepConfig
  init_shape: tuple[int, int]  # (batch, seq_len) of the dummy input used at init

  def __post_init__(self):
    rng = jax.random.PRNGKey(0)
    with self.context():
      boxed = jax.eval_shape(self._init_params, rng)
      self.param_shardings = sharding.logical_shardings(boxed, self.mesh, self.rules)
      abstract = jax.eval_shape(self._init_state, rng)
    self.state_shardings = TrainState(
      step=sharding.replicated(self.mesh),
      params=self.param_shardings,
      opt_state=_opt_state_shardings(abstract.opt_state, self.param_shardings, self.mesh),
      rng=sharding.replicated(self.mesh),
    )
    self.abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract,
      self.state_shardings,
    )

  @contextlib.contextmanager
  def context(self):
    """Mesh + logical rules, active while tracing so activation constraints resolve."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def _init_params(self, rng):
    return self.model.init(rng, init_inputs(*self.init_shape))["params"]

  def _init_state(self, rng):
    params = nn.meta.unbox(self._init_params(rng))
    return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params), rng=rng
    )

  def init_state(self, seed: int) -> TrainState:
    with self.context():
      init = jax.jit(self._init_state, out_shardings=self.state_shardings)
      return init(jax.random.PRNGKey(seed))

  @functools.cached_property
  def train_step(self):
    batch_s = sharding.batch_sharding(self.mesh)
    fn = functools.partial(
      train_step,
      model=self.model,
      tx=self.tx,
      schedule=self.schedule,
      objective=self.objective,
      config=self.step_config,
    )
    jitted = jax.jit(
      fn,
      in_shardings=(self.state_shardings, batch_s),
      out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
      donate_argnums=0,
    )
    return self._in_context(jitted)

  @functools.cached_property
  def eval_step(self):
    fn = functools.partial(
      eval_step, model=self.model, objective=self.objective, config=self.step_config
    )
    jitted = jax.jit(
      fn,
      in_shardings=(self.param_shardings, sharding.batch_sharding(self.mesh)),
      out_shardings=sharding.replicated(self.mesh),
    )
    return self._in_context(jitted)

  def _in_context(self, jitted):
    def call(*args):
      with self.context():
        return jitted(*args)

    return call


def _split_microbatches(batch, accum: int):
  """(B, ...) -> (accum, B / accum, ...); microbatch i takes rows i, i + accum, ... so that
  every device keeps an equal share of every microbatch (no resharding)."""

  def split(x):
    if x.shape[0] % accum:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by accum_steps={accum}")
    x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  return jax.tree.map(split, batch)


def train_step(state: TrainState, batch, *, model, tx, schedule, objective, config: StepConfig):
  """One optimizer update. Gradients are sums over tokens divided by the total token weight,
  so accumulating microbatches gives the same update as one large batch."""
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_sums(params, micro, micro_rng):
    sums = objective(model, params, micro, micro_rng, False, config.loss)
    return sums["loss_sum"], sums

  grad_fn = jax.grad(loss_sums, has_aux=True)
  if config.accum_steps == 1:
    grads, sums = grad_fn(state.params, batch, rng)
  else:
    micro = _split_microbatches(batch, config.accum_steps)

    def accumulate(carry, xs):
      i, mb = xs
      g, s = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (g, s)), None

    zeros = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro), rng)
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), zeros)
    (grads, sums), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(config.accum_steps), micro))

  denom = jnp.maximum(sums["weight_sum"], 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)
  grad_norm = optim.global_norm(grads)
  loss = sums["loss_sum"] / denom
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  def apply_update(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  # A non-finite loss or gradient leaves params and optimizer state untouched; the host stops
  # on `finite`. A cond rather than jnp.where(finite, new, old): the where keeps both old and
  # new state alive, so XLA copies every donated Adam moment (~6% of a small model's step).
  params, opt_state = jax.lax.cond(
    finite, apply_update, lambda p, o, g: (p, o), state.params, state.opt_state, grads
  )
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  metrics = {
    "loss": loss,
    "nll": sums["nll_sum"] / denom,
    "accuracy": sums["correct_sum"] / denom,
    "grad_norm": grad_norm,
    "learning_rate": schedule(state.step),
    "finite": finite,
  }
  return new_state, metrics


def eval_step(params, batch, *, model, objective, config: StepConfig):
  """Token-summed eval quantities for one batch (summed again across batches by the host)."""
  return objective(model, params, batch, jax.random.PRNGKey(0), True, config.loss)
