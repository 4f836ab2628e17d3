"""The train step (gradient accumulation, non-finite guard), schedules, weight-decay mask, losses."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from flaxlm.models import gpt
from flaxlm.nn import losses, sharding
from flaxlm.objectives import LossConfig, causal_lm
from flaxlm.train import optim
from flaxlm.train.steps import StepConfig, Trainable, TrainState, token_init

VOCAB, B, T = 64, 8, 16
TINY = gpt.GPTConfig(
  vocab_size=VOCAB, num_layers=2, num_heads=2, embed_dim=32, mlp_dim=64, max_len=T
)


OPTIMIZERS = {
  "sgd": lambda: optax.sgd(0.5),
  "adamw": lambda: (
    lambda boxed: optim.make_optimizer(optim.OptimConfig(learning_rate=1e-2, warmup_steps=0), boxed)
  ),
}


@functools.cache
def make_trainable(accum_steps=1, opt="sgd", loss=LossConfig()) -> Trainable:
  """One jitted step per distinct setting for the whole module (compiling dominates here)."""
  return Trainable(
    model=gpt.GPT(TINY),
    optimizer=OPTIMIZERS[opt](),
    schedule=optax.constant_schedule(0.5),
    mesh=sharding.make_mesh({"data": 1}, devices=jax.devices()[:1]),
    rules=sharding.DEFAULT_RULES,
    loss=causal_lm,
    step_config=StepConfig(accum_steps=accum_steps, loss=loss),
    init_params=token_init(gpt.GPT(TINY), 1, 8),
  )


@functools.cache
def initial_params():
  return jax.device_get(make_trainable().init_state(seed=0).params)


def fresh_state(trainable: Trainable, params=None) -> TrainState:
  """The seed-0 initial state laid out for `trainable` (each step donates its input state)."""
  params = initial_params() if params is None else params
  state = TrainState(
    step=np.int32(0), params=params, opt_state=trainable.tx.init(params), rng=jax.random.PRNGKey(0)
  )
  return jax.device_put(state, trainable.state_shardings)


@functools.cache
def logits_fn():
  return jax.jit(gpt.GPT(TINY).apply)


def make_batch(seed=0, uneven_weights=True):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, VOCAB, (B, T + 1)).astype(np.int32)
  weights = np.ones((B, T), np.float32)
  if uneven_weights:  # microbatches then hold different numbers of tokens
    weights[0, 3:] = 0
    weights[5, :11] = 0
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights}


def tree_allclose(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


# ----------------------------------------------------------------------------- train step


def test_grad_accumulation_equals_large_batch():
  """SGD makes the update proportional to the gradient, so any accumulation error shows."""
  results = []
  for accum in (1, 4):
    trainable = make_trainable(accum)
    state = fresh_state(trainable)
    for seed in range(2):
      state, m = trainable.train_step(state, make_batch(seed))
    results.append((jax.device_get(state.params), jax.device_get(m)))
  (params_1, m_1), (params_4, m_4) = results
  for key in ("loss", "grad_norm", "accuracy"):
    np.testing.assert_allclose(m_4[key], m_1[key], atol=1e-5, rtol=0)
  tree_allclose(params_4, params_1, atol=1e-5)
  # The updates moved the parameters, so the comparison above is not trivially true.
  moved = params_1["embed"]["embedding"] - initial_params()["embed"]["embedding"]
  assert np.abs(moved).max() > 1e-3


def test_accum_steps_must_divide_batch():
  trainable = make_trainable(3)
  with pytest.raises(ValueError, match="accum_steps=3"):
    trainable.train_step(fresh_state(trainable), make_batch())


def numpy_nll(logits, targets):
  logits = np.asarray(logits, np.float64)
  log_z = np.log(np.exp(logits).sum(-1))
  return log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]


def test_train_step_loss_is_token_weighted_mean():
  trainable = make_trainable()
  batch = make_batch()
  _, m = trainable.train_step(fresh_state(trainable), batch)
  nll = numpy_nll(logits_fn()({"params": initial_params()}, batch["inputs"]), batch["targets"])
  expected = (nll * batch["weights"]).sum() / batch["weights"].sum()
  np.testing.assert_allclose(m["loss"], expected, rtol=1e-5)
  assert m["finite"]


@pytest.mark.parametrize("poison", ["nan_param", "inf_weight"])
def test_non_finite_step_leaves_state_unchanged(poison):
  trainable = make_trainable(opt="adamw")
  state, _ = trainable.train_step(fresh_state(trainable), make_batch(1))  # non-zero Adam moments
  batch = make_batch(2)
  if poison == "nan_param":
    params = jax.tree.map(np.array, jax.device_get(state.params))
    params["layers_0"]["mlp"]["wi"]["kernel"][0, 0] = np.nan
    state = jax.device_put(state.replace(params=params), trainable.state_shardings)
  else:
    batch["weights"][2, 4] = np.inf
  before = jax.device_get(state)
  new_state, m = trainable.train_step(state, batch)  # `state` is donated here
  assert not bool(m["finite"])
  assert not (math.isfinite(float(m["loss"])) and math.isfinite(float(m["grad_norm"])))
  after = jax.device_get(new_state)
  for x, y in zip(
    jax.tree.leaves((before.params, before.opt_state)),
    jax.tree.leaves((after.params, after.opt_state)),
    strict=True,
  ):
    np.testing.assert_array_equal(x, y)  # NaNs compare equal here
  if poison == "inf_weight":  # the guard is per step: a good batch afterwards updates again
    final, m = trainable.train_step(new_state, make_batch(3))
    assert bool(m["finite"])
    assert not np.allclose(
      jax.device_get(final.params)["embed"]["embedding"], after.params["embed"]["embedding"]
    )


# ----------------------------------------------------------------------------- schedules


def lr_at(schedule_name, steps, **kw):
  fields = dict(learning_rate=1.0, warmup_steps=10, decay_steps=110, min_learning_rate=0.1)
  fields.update(kw)
  fn = optim.schedule(optim.OptimConfig(schedule=schedule_name, **fields))
  return [float(fn(s)) for s in steps]


def test_warmup_is_linear_from_zero():
  for name in ("cosine", "linear", "constant"):
    np.testing.assert_allclose(lr_at(name, [0, 1, 5, 10]), [0.0, 0.1, 0.5, 1.0], atol=1e-6)


def test_cosine_schedule():
  # After warmup: min + (peak - min) * (1 + cos(pi * t)) / 2, t = (step - 10) / 100.
  expected = [0.1 + 0.9 * (1 + math.cos(math.pi * t)) / 2 for t in (0.25, 0.5, 1.0)]
  np.testing.assert_allclose(lr_at("cosine", [35, 60, 110]), expected, atol=1e-6)
  np.testing.assert_allclose(lr_at("cosine", [500]), [0.1], atol=1e-6)  # holds the floor


def test_linear_and_constant_schedules():
  np.testing.assert_allclose(
    lr_at("linear", [35, 60, 110, 500]), [0.775, 0.55, 0.1, 0.1], atol=1e-6
  )
  np.testing.assert_allclose(lr_at("constant", [11, 60, 500]), [1.0, 1.0, 1.0], atol=1e-6)


def test_no_warmup_starts_at_peak():
  np.testing.assert_allclose(lr_at("cosine", [0, 55], warmup_steps=0), [1.0, 0.55], atol=1e-6)


def test_unknown_schedule():
  with pytest.raises(ValueError, match="'cosine', 'linear', 'constant'"):
    optim.schedule(optim.OptimConfig(schedule="exponential"))


# ----------------------------------------------------------------------------- weight decay


def abstract_params(config):
  init = functools.partial(
    gpt.GPT(config).init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32)
  )
  return jax.eval_shape(init)["params"]  # boxed: logical axis names decide decay


def flat_mask(params, **kw):
  return {
    "/".join(k): v for k, v in traverse_util.flatten_dict(optim.decay_mask(params, **kw)).items()
  }


@pytest.mark.parametrize("scan_layers", [False, True])
def test_decay_mask_kernels_only(scan_layers):
  config = dataclasses.replace(TINY, scan_layers=scan_layers, tie_embeddings=False)
  mask = flat_mask(abstract_params(config))
  layer = "layers" if scan_layers else "layers_0"
  for name in ("attn/query/kernel", "attn/out/kernel", "mlp/wi/kernel", "mlp/wo/kernel"):
    assert mask[f"{layer}/{name}"], name
  assert mask["lm_head/kernel"]
  no_decay = [k for k, v in mask.items() if not v]
  assert all(k.endswith(("bias", "scale", "embedding")) for k in no_decay), no_decay
  for name in ("attn/query/bias", "mlp/wo/bias", "ln_attn/scale", "ln_attn/bias"):
    assert not mask[f"{layer}/{name}"], name
  assert not mask["embed/embedding"] and not mask["pos_embed/embedding"]
  assert not mask["ln_final/scale"]
  decayed = flat_mask(abstract_params(config), decay_embeddings=True)
  assert decayed["embed/embedding"] and decayed["pos_embed/embedding"]
  assert not decayed[f"{layer}/ln_mlp/scale"]


def test_adamw_decays_only_masked_leaves():
  """With zero gradients AdamW's update is -lr * wd * p on decayed leaves and 0 elsewhere."""
  params = initial_params()
  tx = optim.make_optimizer(
    optim.OptimConfig(
      learning_rate=0.1, weight_decay=0.5, warmup_steps=0, schedule="constant", grad_clip_norm=0
    ),
    abstract_params(TINY),
  )
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  kernel = params["layers_0"]["mlp"]["wi"]["kernel"]
  np.testing.assert_allclose(updates["layers_0"]["mlp"]["wi"]["kernel"], -0.05 * kernel, rtol=1e-6)
  assert not np.any(updates["embed"]["embedding"])
  assert not np.any(updates["layers_0"]["ln_attn"]["scale"])
  assert not np.any(updates["layers_0"]["attn"]["query"]["bias"])


# ----------------------------------------------------------------------------- losses


def numpy_losses(logits, targets, weights, smoothing, z):
  logits = np.asarray(logits, np.float64)
  log_z = np.log(np.exp(logits).sum(-1))
  logp = logits - log_z[..., None]
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  v = logits.shape[-1]
  smooth_target = np.full_like(logp, smoothing / v)
  np.put_along_axis(smooth_target, targets[..., None], 1 - smoothing + smoothing / v, -1)
  loss = -(smooth_target * logp).sum(-1) + z * log_z**2
  w = weights.sum()
  return (loss * weights).sum() / w, (nll * weights).sum() / w


@pytest.mark.parametrize("smoothing, z", [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-2), (0.2, 1e-3)])
def test_cross_entropy_smoothing_and_z_loss(smoothing, z):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3 + 2  # log Z far from 0
  targets = rng.integers(0, 11, (3, 5))
  weights = (rng.random((3, 5)) > 0.3).astype(np.float32)
  sums = losses.cross_entropy(
    jnp.asarray(logits),
    jnp.asarray(targets),
    jnp.asarray(weights),
    label_smoothing=smoothing,
    z_loss=z,
  )
  want_loss, want_nll = numpy_losses(logits, targets, weights, smoothing, z)
  np.testing.assert_allclose(sums["loss_sum"] / sums["weight_sum"], want_loss, rtol=1e-5)
  np.testing.assert_allclose(sums["nll_sum"] / sums["weight_sum"], want_nll, rtol=1e-5)
  if smoothing or z:
    assert abs(want_loss - want_nll) > 1e-4  # the extra terms are really there (> rtol)


def test_step_config_loss_reaches_the_step():
  """StepConfig.loss changes the train loss but not the reported NLL, as computed by hand."""
  batch = make_batch()
  trainable = make_trainable(loss=LossConfig(label_smoothing=0.1, z_loss=1e-2))
  logits = logits_fn()({"params": initial_params()}, batch["inputs"])
  want_loss, want_nll = numpy_losses(logits, batch["targets"], batch["weights"], 0.1, 1e-2)
  _, m = trainable.train_step(fresh_state(trainable), batch)
  np.testing.assert_allclose(m["loss"], want_loss, rtol=1e-5)
  np.testing.assert_allclose(m["nll"], want_nll, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt", "bert", "encdec", "lstm"])
def test_decay_goes_by_role_in_every_family(family):
  """Weight decay by each parameter's logical axes: every kernel decays; biases, norm scales,
  BERT's per-vocabulary mlm_bias and lookup tables do not (tables only with decay_embeddings)."""
  from flaxlm.models import registry

  fam = registry.family_of(family)
  preset = {"gpt": "tiny", "bert": "bert_tiny", "encdec": "t5_tiny", "lstm": "bilstm_char"}[family]
  config = dataclasses.replace(fam.presets[preset], vocab_size=64)
  if family == "lstm":
    config = dataclasses.replace(config, char_vocab_size=20)
    init = lambda: fam.module_cls(config).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32), chars=jnp.ones((1, 8, 4), jnp.int32)
    )
  else:
    init = lambda: fam.module_cls(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  boxed = jax.eval_shape(init)["params"]
  for decay_embeddings in (False, True):
    mask = flat_mask(boxed, decay_embeddings=decay_embeddings)
    for path, decays in mask.items():
      leaf = path.split("/")[-1]
      if leaf == "kernel":
        assert decays, path
      elif leaf in ("bias", "scale", "mlm_bias"):
        assert not decays, path
      else:  # token, position, type, character and relative-position tables
        assert leaf == "embedding" and decays == decay_embeddings, path
