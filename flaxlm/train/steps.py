"""Train state and the pure, jit-compiled train, eval and predict steps.

The state is created directly sharded: `jax.eval_shape` gives the abstract state, logical
axis names give its shardings, and `jit(init, out_shardings=...)` materializes each shard
on its own device. Steps are jitted with in/out shardings and donate the old state.

A step takes a loss function `loss(model, params, batch, rng, deterministic, LossConfig) ->
sums` (token- or example-summed quantities, see `losses.cross_entropy`); it knows nothing of
objectives or tasks. Frozen parameters (e.g. a fine-tuned model's backbone) are split off
before differentiation: they get no gradient and no optimizer state.
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
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flaxlm.config import StepConfig  # noqa: F401  (re-exported: steps take it)
from flaxlm.nn import quantize, sharding
from flaxlm.train import optim


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar
  params: Any
  opt_state: Any  # of the trainable parameters only
  rng: jax.Array  # raw uint32[2] key; per-step keys are fold_in(rng, step)


def init_inputs(batch_size: int, seq_len: int) -> jax.Array:
  return jnp.zeros((batch_size, seq_len), jnp.int32)


@dataclasses.dataclass(frozen=True)
class ModelInit:
  """`Trainable.init_params` of a module called on example inputs: rng -> boxed params. A
  dataclass, not a lambda, so that a wrapped module (Qwix's quantized one, train/ptq.py) can
  be initialized on the same inputs."""

  model: nn.Module
  inputs: tuple

  def __call__(self, rng):
    return self.model.init(rng, *self.inputs)["params"]


def token_init(model: nn.Module, batch_size: int, seq_len: int) -> ModelInit:
  """`Trainable.init_params` for a model called on token ids alone (language models)."""
  return ModelInit(model, (init_inputs(batch_size, seq_len),))


def split_params(params, frozen: frozenset):
  """(trainable, frozen) sub-trees of a nested dict of parameters, by flattened path."""
  if not frozen:
    return params, {}
  flat = traverse_util.flatten_dict(params)
  train = {k: v for k, v in flat.items() if k not in frozen}
  fixed = {k: v for k, v in flat.items() if k in frozen}
  return traverse_util.unflatten_dict(train), traverse_util.unflatten_dict(fixed)


def merge_params(train, fixed):
  if not fixed:
    return train
  flat = traverse_util.flatten_dict(train)
  flat.update(traverse_util.flatten_dict(fixed))
  return traverse_util.unflatten_dict(flat)


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
  # The optimizer, or a function of the abstract boxed parameters that builds it (their
  # logical axis names decide weight decay: see optim.make_optimizer).
  optimizer: optax.GradientTransformation | Callable[[Any], optax.GradientTransformation]
  schedule: optax.Schedule
  mesh: Mesh
  rules: tuple
  loss: Callable  # (model, params, batch, rng, deterministic, LossConfig) -> sums
  step_config: StepConfig
  init_params: Callable[[jax.Array], Any]  # rng -> boxed params, e.g. model.init(...)['params']
  frozen: Callable[[tuple[str, ...]], bool] | None = None  # parameter path -> frozen?
  # False: checkpoints hold the trained parameters only (a LoRA run's adapters and head); the
  # frozen ones are rebuilt from where they came from (`with_frozen`).
  saves_frozen: bool = True

  def __post_init__(self):
    rng = jax.random.PRNGKey(0)
    with self.context():
      boxed = jax.eval_shape(self.init_params, rng)
      self.param_shardings = sharding.logical_shardings(boxed, self.mesh, self.rules)
      flat = traverse_util.flatten_dict(sharding.strip_axes(boxed))
      self.frozen_paths = frozenset(k for k in flat if self.frozen and self.frozen(k))
      train_boxed, _ = split_params(boxed, self.frozen_paths)
      self.tx = self.optimizer if hasattr(self.optimizer, "update") else self.optimizer(train_boxed)
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

  @property
  def abstract_checkpoint(self) -> TrainState:
    """The abstract state a checkpoint holds (restore into this)."""
    return self.to_checkpoint(self.abstract_state)

  def to_checkpoint(self, state: TrainState) -> TrainState:
    """What a checkpoint stores of `state`: all of it, or (saves_frozen=False) all but the
    frozen parameters."""
    return state.replace(params=self.saved_params(state.params))

  def saved_params(self, params):
    return params if self.saves_frozen else split_params(params, self.frozen_paths)[0]

  def with_frozen(self, saved_params, frozen_from):
    """The whole tree: `saved_params` (restored) + the frozen parameters of `frozen_from`."""
    if self.saves_frozen:
      return saved_params
    return merge_params(saved_params, split_params(frozen_from, self.frozen_paths)[1])

  @classmethod
  def with_adamw(cls, model, optim_config: optim.OptimConfig, mesh, rules, loss, step_config,
                 init_params, frozen=None, saves_frozen=True, last=None) -> Trainable:  # fmt: skip
    """A Trainable with flaxlm's AdamW (weight decay by parameter role) and schedule; `last`
    (boxed trainable parameters -> a transformation) ends the chain (pruning's masks)."""

    def optimizer(boxed):
      adamw = optim.make_optimizer(optim_config, boxed)
      return optax.chain(adamw, last(boxed)) if last else adamw

    return cls(
      model=model,
      optimizer=optimizer,
      schedule=optim.schedule(optim_config),
      mesh=mesh,
      rules=rules,
      loss=loss,
      step_config=step_config,
      init_params=init_params,
      frozen=frozen,
      saves_frozen=saves_frozen,
    )

  @contextlib.contextmanager
  def context(self):
    """Mesh + logical rules, active while tracing so activation constraints resolve."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def _init_state(self, rng, overrides=None):
    params = nn.meta.unbox(self.init_params(rng))
    if overrides:
      flat = traverse_util.flatten_dict(params)
      flat.update({k: quantize.like(flat[k], v) for k, v in overrides.items()})
      params = traverse_util.unflatten_dict(flat)
    train, _ = split_params(params, self.frozen_paths)
    return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(train), rng=rng
    )

  def init_state(self, seed: int, overrides: dict | None = None) -> TrainState:
    """A fresh state; `overrides` ({flattened path: array}, e.g. a pretrained backbone)
    replace those parameters of the random init."""
    with self.context():
      init = jax.jit(self._init_state, out_shardings=self.state_shardings)
      return init(jax.random.PRNGKey(seed), overrides)

  @property
  def num_trainable(self) -> int:
    flat = traverse_util.flatten_dict(self.abstract_state.params)
    return sum(v.size for k, v in flat.items() if k not in self.frozen_paths)

  @functools.cached_property
  def train_step(self):
    return self._in_context(self.jitted_train_step)

  @functools.cached_property
  def jitted_train_step(self):
    """The jitted step itself (call it, or `.lower` it, inside `context()`)."""
    fn = functools.partial(
      train_step,
      model=self.model,
      tx=self.tx,
      schedule=self.schedule,
      loss=self.loss,
      config=self.step_config,
      frozen=self.frozen_paths,
    )
    return jax.jit(
      fn,
      in_shardings=(self.state_shardings, sharding.batch_sharding(self.mesh)),
      out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
      donate_argnums=0,
    )

  @property
  def eval_loss(self) -> Callable:
    """fn(params, batch) -> summed eval quantities, not compiled (to compose with others)."""
    return functools.partial(eval_step, model=self.model, loss=self.loss, config=self.step_config)

  @functools.cached_property
  def eval_step(self):
    return self.jit_params_batch(self.eval_loss)

  def jit_params_batch(self, fn: Callable):
    """fn(params, batch) jitted on this layout; outputs are replicated to every host (summed
    metrics, or per-example predictions for the host to score)."""
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


def train_step(state: TrainState, batch, *, model, tx, schedule, loss, config: StepConfig, frozen):
  """One optimizer update. Gradients are sums over tokens (or examples) divided by the total
  weight, so accumulating microbatches gives the same update as one large batch."""
  rng = jax.random.fold_in(state.rng, state.step)
  train_params, fixed_params = split_params(state.params, frozen)

  def loss_sums(train, micro, micro_rng):
    sums = loss(model, merge_params(train, fixed_params), micro, micro_rng, False, config.loss)
    return sums["loss_sum"], sums

  grad_fn = jax.grad(loss_sums, has_aux=True)
  if config.accum_steps == 1:
    grads, sums = grad_fn(train_params, batch, rng)
  else:
    micro = _split_microbatches(batch, config.accum_steps)

    def accumulate(carry, xs):
      i, mb = xs
      g, s = grad_fn(train_params, mb, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (g, s)), None

    zeros = jax.eval_shape(grad_fn, train_params, jax.tree.map(lambda x: x[0], micro), rng)
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), zeros)
    (grads, sums), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(config.accum_steps), micro))

  denom = jnp.maximum(sums["weight_sum"], 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)
  grad_norm = optim.global_norm(grads)
  finite = jnp.isfinite(sums["loss_sum"]) & jnp.isfinite(grad_norm)

  def apply_update(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  # A non-finite loss or gradient leaves params and optimizer state untouched; the host stops
  # on `finite`. A cond rather than jnp.where(finite, new, old): the where keeps both old and
  # new state alive, so XLA copies every donated Adam moment (~6% of a small model's step).
  train_params, opt_state = jax.lax.cond(
    finite, apply_update, lambda p, o, g: (p, o), train_params, state.opt_state, grads
  )
  new_state = state.replace(
    step=state.step + 1, params=merge_params(train_params, fixed_params), opt_state=opt_state
  )
  metrics = {
    "loss": sums["loss_sum"] / denom,
    "grad_norm": grad_norm,
    "learning_rate": schedule(state.step),
    "finite": finite,
  }
  if "nll_sum" in sums:  # token losses (losses.cross_entropy)
    metrics["nll"] = sums["nll_sum"] / denom
    metrics["accuracy"] = sums["correct_sum"] / denom
  return new_state, metrics


def eval_step(params, batch, *, model, loss, config: StepConfig):
  """Summed eval quantities for one batch (summed again across batches by the host)."""
  return loss(model, params, batch, jax.random.PRNGKey(0), True, config.loss)
