"""Sharding: the mesh, parameter layouts from logical axis rules, and the central promise that a
sharded train step computes exactly what the one-device step computes, on any mesh."""

import dataclasses
import functools

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from flaxlm import config
from flaxlm.models import gpt
from flaxlm.nn import sharding
from flaxlm.pretraining import run as pretraining
from flaxlm.train import checkpoint
from flaxlm.train.steps import TrainState

VOCAB, B, T = 64, 8, 16
MODELS = {
  "gpt2": gpt.GPTConfig(
    vocab_size=VOCAB,
    num_layers=2,
    num_heads=4,
    embed_dim=32,
    mlp_dim=64,
    max_len=T,
    scan_layers=True,
  ),
  "llama": gpt.GPTConfig(
    vocab_size=VOCAB,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    embed_dim=32,
    mlp_dim=64,
    max_len=T,
    position="rope",
    norm="rmsnorm",
    activation="silu",
    gated_mlp=True,
    use_bias=False,
    tie_embeddings=False,
    scan_layers=True,
  ),
}
NUM_STEPS = 3


def run_config(model: gpt.GPTConfig, mesh=(1, 1, 1)):
  """A RunConfig as train.py builds it: AdamW with clipping and weight decay, no warmup.

  Adam's eps is raised from 1e-8 to 1e-6: some gradients are exactly 0 in exact arithmetic
  (the key bias: softmax ignores a shift shared by all scores of a query), and with a tiny eps
  Adam turns their rounding noise (~1e-12), which differs between layouts, into steps of ~lr."""
  c = config.default_config()
  c.model = ml_collections.ConfigDict(dataclasses.asdict(model))
  c.batch_size, c.seq_len = B, T
  c.learning_rate, c.warmup_steps, c.schedule = 1e-3, 0, "constant"
  c.mesh = ml_collections.ConfigDict(dict(zip(sharding.MESH_AXES, mesh, strict=True)))
  run = config.from_config_dict(c)
  return dataclasses.replace(run, eps=1e-6)


@functools.cache
def build(name: str, mesh_shape: tuple[int, int, int]):
  """pretraining.build on a (data, fsdp, tensor) mesh of prod(mesh_shape) devices."""
  devices = jax.devices()[: int(np.prod(mesh_shape))]
  mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, mesh_shape, strict=True)), devices)
  return pretraining.build(run_config(MODELS[name], mesh_shape), VOCAB, mesh)


@functools.cache
def initial_state(name: str) -> TrainState:
  """A random initial state as host arrays (numpy draws: compiling `init` takes seconds)."""
  trainable = build(name, (1, 1, 1))
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda a: rng.normal(scale=0.05, size=a.shape).astype(a.dtype),
    trainable.abstract_state.params,
  )
  return jax.device_get(
    TrainState(
      step=np.int32(0),
      params=params,
      opt_state=trainable.tx.init(params),
      rng=np.asarray(jax.random.PRNGKey(0)),
    )
  )


def make_batch(step: int, packed: bool) -> dict:
  rng = np.random.default_rng(step)
  tokens = rng.integers(0, VOCAB, (B, T + 1)).astype(np.int32)
  weights = np.ones((B, T), np.float32)
  weights[1, 5:] = 0  # rows hold different numbers of tokens
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights}
  if packed:  # two documents per row, positions restarting at the boundary
    cut = 3 + step
    batch["segment_ids"] = np.where(np.arange(T) < cut, 1, 2).astype(np.int32)[None].repeat(B, 0)
    batch["positions"] = np.where(np.arange(T) < cut, np.arange(T), np.arange(T) - cut)
    batch["positions"] = batch["positions"].astype(np.int32)[None].repeat(B, 0)
  return batch


@functools.cache
def train(name: str, mesh_shape: tuple[int, int, int]):
  """NUM_STEPS train steps from the common initial state; returns (state on device, metrics)."""
  trainable = build(name, mesh_shape)
  state = jax.device_put(initial_state(name), trainable.state_shardings)
  batch_sharding = sharding.batch_sharding(trainable.mesh)
  history = []
  for step in range(NUM_STEPS):
    batch = sharding.to_global(make_batch(step, packed=name == "llama"), batch_sharding)
    state, metrics = trainable.train_step(state, batch)
    history.append(jax.device_get(metrics))
  return state, history


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  a, b = jax.device_get(a), jax.device_get(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path)
    )


# ----------------------------------------------------------------------------- mesh


def test_make_mesh_fills_one_axis():
  """-1 takes the devices the other axes leave; missing axes are 1."""
  mesh = sharding.make_mesh({"data": -1})
  assert dict(mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
  mesh = sharding.make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
  mesh = sharding.make_mesh({"tensor": -1}, jax.devices()[:2])
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 2}
  assert sharding.data_parallel_size(sharding.make_mesh({"data": 2, "fsdp": 4})) == 8


@pytest.mark.parametrize(
  "sizes, message",
  [
    ({"data": 3}, r"needs 3 devices but 8 are available"),
    ({"data": 2, "fsdp": 2}, r"needs 4 devices but 8"),
    ({"data": 16, "tensor": 1}, r"needs 16 devices"),
    ({"data": 3, "fsdp": -1}, r"does not divide 8 devices"),
    ({"data": -1, "tensor": -1}, r"at most one axis may be -1"),
    ({"model": 8}, r"unknown axes \['model'\]"),
  ],
)
def test_make_mesh_rejects_bad_sizes(sizes, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(sizes)


# ----------------------------------------------------------------------------- layouts


def test_parameters_and_optimizer_state_are_sharded_by_the_rules():
  """On a (1, 4, 2) mesh, init_state returns arrays laid out as the rules declare: kernels split
  over fsdp ('embed') and tensor ('heads', 'mlp', 'vocab'), Adam moments like their params."""
  trainable = build("llama", (1, 4, 2))
  specs = jax.tree.map(lambda s: s.spec, trainable.param_shardings)
  layer = specs["layers"]  # scanned: leading 'layers' axis, never sharded
  assert layer["mlp"]["wi"]["kernel"] == P(None, "fsdp", "tensor")
  assert layer["mlp"]["wo"]["kernel"] == P(None, "tensor", "fsdp")
  assert layer["attn"]["query"]["kernel"] == P(None, "fsdp", "tensor", None)
  assert layer["attn"]["key"]["kernel"] == P(None, "fsdp", "tensor", None)
  assert layer["attn"]["out"]["kernel"] == P(None, "tensor", None, "fsdp")
  assert specs["embed"]["embedding"] == P("tensor", "fsdp")
  assert specs["lm_head"]["kernel"] == P("fsdp", "tensor")
  assert specs["ln_final"]["scale"] in (P(), P(None))

  state = trainable.init_state(seed=0)
  wi = state.params["layers"]["mlp"]["wi"]["kernel"]  # (layers 2, embed 32, mlp 64)
  assert wi.sharding.spec == P(None, "fsdp", "tensor")
  assert {s.data.shape for s in wi.addressable_shards} == {(2, 8, 32)}
  for array, declared in zip(
    jax.tree.leaves(state), jax.tree.leaves(trainable.state_shardings), strict=True
  ):
    assert array.sharding.is_equivalent_to(declared, array.ndim)

  adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu"))]
  adam = [s for s in adam if hasattr(s, "mu")]
  assert len(adam) == 1
  for moments in (adam[0].mu, adam[0].nu):
    for m, p in zip(jax.tree.leaves(moments), jax.tree.leaves(state.params), strict=True):
      assert m.shape == p.shape and m.sharding == p.sharding
  # A real initialization: unit norm scales, N(0, 0.02) weights, zero moments.
  np.testing.assert_array_equal(state.params["ln_final"]["scale"], 1.0)
  np.testing.assert_allclose(np.std(wi), 0.02, rtol=0.1)
  assert not np.any(adam[0].mu["lm_head"]["kernel"])


def test_batches_split_over_data_and_fsdp():
  mesh = build("llama", (2, 2, 2)).mesh
  batch = sharding.to_global(make_batch(0, packed=False), sharding.batch_sharding(mesh))
  inputs = batch["inputs"]
  assert inputs.sharding.spec == P(("data", "fsdp"))
  assert {s.data.shape for s in inputs.addressable_shards} == {(B // 4, T)}
  np.testing.assert_array_equal(inputs, make_batch(0, packed=False)["inputs"])


# ----------------------------------------------------------------------------- sharded steps

MESHES = {  # each layout costs a compile (~5 s here); between them they cover every axis
  "gpt2": [(8, 1, 1), (1, 2, 4), (2, 2, 2)],  # pure data parallelism; tensor = 4; all axes
  "llama": [(2, 2, 2), (1, 4, 2)],  # all three axes; FSDP x tensor (2 kv heads: tensor <= 2)
}


@pytest.mark.parametrize(
  "name, mesh_shape",
  [
    pytest.param(
      n, m, id=f"{n}-{'x'.join(map(str, m))}", marks=[pytest.mark.slow] if m == (8, 1, 1) else []
    )
    for n, ms in MESHES.items()
    for m in ms
  ],
)
def test_sharded_train_steps_equal_one_device(name, mesh_shape):
  """Data, FSDP and tensor parallelism change where the numbers live, not what they are:
  three AdamW steps give the one-device loss, metrics, params and optimizer state."""
  ref_state, ref_metrics = train(name, (1, 1, 1))
  state, metrics = train(name, mesh_shape)
  for step, (m, ref) in enumerate(zip(metrics, ref_metrics, strict=True)):
    assert bool(m["finite"])
    for key in ("loss", "nll", "accuracy", "grad_norm", "learning_rate"):
      np.testing.assert_allclose(m[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=f"{step} {key}")
  assert_trees_close(state, ref_state)
  # The weights moved (by ~lr per step), so matching the reference is not matching the start.
  start, moved = initial_state(name).params, jax.device_get(ref_state.params)
  for path in (("embed", "embedding"), ("layers", "mlp", "wi", "kernel")):
    delta = functools.reduce(dict.get, path, moved) - functools.reduce(dict.get, path, start)
    assert np.abs(delta).max() > 1e-3, path
  # ... and the state keeps the layout the step declares.
  for array, declared in zip(
    jax.tree.leaves(state), jax.tree.leaves(build(name, mesh_shape).state_shardings), strict=True
  ):
    assert array.sharding.is_equivalent_to(declared, array.ndim)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_restores_onto_another_mesh(tmp_path):
  """A state saved from a (2, 2, 2) mesh restores onto a (1, 8, 1) mesh (and back onto one
  device) with equal values and the target's shardings."""
  saved, _ = train("llama", (2, 2, 2))
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), async_save=False)
  try:
    ckpt.save(NUM_STEPS, saved, {"note": "sharding test"}, force=True)
    assert ckpt.latest_step() == NUM_STEPS
    for target in [(1, 8, 1), (1, 1, 1)]:
      trainable = build("llama", target)
      restored = ckpt.restore_state(trainable.abstract_state)
      assert_trees_close(restored, saved, rtol=0, atol=0)
      assert isinstance(restored, TrainState) and int(restored.step) == NUM_STEPS
      for array, declared in zip(
        jax.tree.leaves(restored), jax.tree.leaves(trainable.state_shardings), strict=True
      ):
        assert array.sharding.is_equivalent_to(declared, array.ndim)
  finally:
    ckpt.close()
