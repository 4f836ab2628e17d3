"""flaxlm.nn.attention: the Pallas splash kernel (run by the Pallas interpreter on CPU) and the
structural `jax.nn.dot_product_attention` call that cuDNN gets equal the reference attention
in values and gradients for causal, padded and packed inputs; `auto` picks the kernel per
backend; bad combinations are config errors."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxlm.errors import ConfigError
from flaxlm.models import encdec, gpt
from flaxlm.nn import attention, losses, sharding
from flaxlm.train import validation

B, N, H = 2, 4, 16


def qkv(t, s, kv_heads, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(B, t, N, H)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(B, s, kv_heads, H)), jnp.float32) for _ in range(2))
  return q, k, v


def segments(kind: str, length: int) -> np.ndarray:
  """(B, length) segment ids: row 0 full, row 1 as `kind` says."""
  seg = np.ones((B, length), np.int32)
  if kind == "padded":  # 40 tokens of padding at the end
    seg[1, length - 40 :] = 0
  elif kind == "packed":  # three documents and padding
    seg[1] = np.repeat([1, 2, 3, 0], [length // 2, length // 4, length // 8, length // 8])
  return seg


def positions_of(seg: np.ndarray) -> np.ndarray:
  """Positions restarting at every segment (as packed batches carry them)."""
  pos = np.zeros_like(seg)
  for row in range(seg.shape[0]):
    for i in range(1, seg.shape[1]):
      pos[row, i] = pos[row, i - 1] + 1 if seg[row, i] == seg[row, i - 1] else 0
  return pos


def masking_for(kind: str, t: int, causal: bool, lengths: bool = False) -> attention.Masking:
  if kind == "none":
    pos = np.broadcast_to(np.arange(t), (B, t))
    return attention.Masking.build(causal=causal, q_positions=pos, kv_positions=pos)
  seg = segments(kind, t)
  pos = positions_of(seg)
  if lengths:  # right-padded rows given as lengths rather than segment ids
    return attention.Masking.build(
      causal=causal, q_positions=pos, kv_positions=pos, lengths=(seg > 0).sum(1).astype(np.int32)
    )
  return attention.Masking.build(seg, seg, causal=causal, q_positions=pos, kv_positions=pos)


def values_and_grads(fn, q, k, v, live):
  """fn's output and the gradients of a loss over the `live` (non-padding) query rows only:
  padding rows differ between kernels (the reference averages every key there, splash the
  padding keys) and a model never reads them."""

  def loss(q, k, v):
    out = fn(q, k, v)
    return jnp.sum(jnp.sin(out) * live[:, :, None, None]), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return out * live[:, :, None, None], grads


def assert_same(got, want, atol=2e-5):
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, atol=atol, rtol=1e-4)


def reference(masking):
  return lambda q, k, v: attention.einsum_attention(q, k, v, masking.dense_mask(), None)


# ----------------------------------------------------------------------------- splash


@pytest.mark.parametrize(
  "kind,causal,kv_heads,length",
  [
    # 3 x 3 blocks of 128: the kernel skips the 3 above the diagonal.
    pytest.param("none", True, 2, 384, marks=pytest.mark.slow),
    ("padded", True, 4, 128),
    ("packed", True, 2, 128),
    # Bidirectional (BERT) with padding; the cross-attention test also covers it.
    pytest.param("padded", False, 2, 128, marks=pytest.mark.slow),
  ],
)
def test_splash_equals_reference_values_and_grads(kind, causal, kv_heads, length):
  q, k, v = qkv(length, length, kv_heads)
  masking = masking_for(kind, length, causal)
  live = jnp.asarray(segments(kind, length) > 0, jnp.float32)
  splash = lambda q, k, v: attention.splash_attention(q, k, v, masking, interpret=True)
  got = values_and_grads(splash, q, k, v, live)
  want = values_and_grads(reference(masking), q, k, v, live)
  assert_same(got, want)


def test_splash_cross_attention_with_source_padding():
  """Decoder queries (T) over encoder keys (S != T), each side padded differently."""
  t, s = 128, 256
  q, k, v = qkv(t, s, 2)
  q_seg, kv_seg = segments("padded", t), segments("packed", s)
  q_seg[1, :100], kv_seg[1] = 3, np.where(kv_seg[1] == 3, 3, 0)  # row 1: document 3 only
  assert (kv_seg[1] == 3).sum() == 32
  masking = attention.Masking.build(q_seg, kv_seg, causal=False)
  live = jnp.asarray(q_seg > 0, jnp.float32)
  splash = lambda q, k, v: attention.splash_attention(q, k, v, masking, interpret=True)
  assert_same(
    values_and_grads(splash, q, k, v, live), values_and_grads(reference(masking), q, k, v, live)
  )


@pytest.mark.slow
def test_splash_on_a_mesh_equals_reference_on_one_device():
  """A packed and padded GPT batch: splash under shard_map on a (data 2, fsdp 2, tensor 2)
  mesh gives the loss and parameter gradients of the einsum path on one device."""
  config = gpt.GPTConfig(
    vocab_size=64,
    num_layers=1,
    num_heads=4,
    num_kv_heads=2,
    embed_dim=32,
    mlp_dim=64,
    max_len=256,
    position="rope",
  )
  seg = np.concatenate([segments("packed", 256)] * 2)  # 4 rows
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 64, seg.shape), jnp.int32)
  batch = dict(segment_ids=jnp.asarray(seg), positions=jnp.asarray(positions_of(seg)))
  abstract = jax.eval_shape(lambda: gpt.GPT(config).init(jax.random.PRNGKey(0), tokens)["params"])
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda a: jnp.asarray(rng.normal(scale=0.2, size=a.shape), a.dtype), nn.meta.unbox(abstract)
  )

  def loss_and_grads(impl, axes):
    model = gpt.GPT(dataclasses.replace(config, attention_impl=impl))

    def loss(p):
      logits = model.apply({"params": p}, tokens, **batch)
      return losses.cross_entropy(logits, tokens, jnp.asarray(seg > 0, jnp.float32))["loss_sum"]

    devices = jax.devices()[: int(np.prod(axes))]
    mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, axes, strict=True)), devices)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
      return jax.device_get(jax.jit(jax.value_and_grad(loss))(params))

  want = loss_and_grads("einsum", (1, 1, 1))
  got = loss_and_grads("splash_interpret", (2, 2, 2))
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  assert_same(got[1], want[1], atol=1e-4)


# ----------------------------------------------------------------------------- cuDNN's call


@pytest.mark.parametrize(
  "kind,lengths", [("none", False), ("padded", True), ("packed", False), ("padded", False)]
)
def test_structural_call_equals_reference(kind, lengths):
  """What cuDNN receives (is_causal, per-row lengths; a mask only for packed segments) run
  by JAX's XLA path on CPU: the translation from Masking is right."""
  t = 128
  q, k, v = qkv(t, t, 2)
  masking = masking_for(kind, t, causal=True, lengths=lengths)
  if lengths:  # the same mask as the segment ids it stands for
    assert masking.q_lengths is not None
    by_segments = masking_for(kind, t, causal=True).dense_mask()
    np.testing.assert_array_equal(masking.dense_mask(), by_segments)
  live = jnp.asarray(segments(kind, t) > 0, jnp.float32)
  structural = lambda q, k, v: attention.structural_dot_product_attention(
    q, k, v, masking, None, implementation=None
  )
  assert_same(
    values_and_grads(structural, q, k, v, live),
    values_and_grads(reference(masking), q, k, v, live),
  )


# ----------------------------------------------------------------------------- auto and errors


@pytest.mark.parametrize(
  "backend,dtype,expected",
  [
    ("cpu", jnp.float32, "einsum"),
    ("cpu", jnp.bfloat16, "einsum"),
    ("tpu", jnp.float32, "splash"),
    ("tpu", jnp.bfloat16, "splash"),
    ("gpu", jnp.bfloat16, "cudnn"),
    ("gpu", jnp.float16, "cudnn"),
    ("gpu", jnp.float32, "xla"),  # cuDNN's flash kernel takes no float32
  ],
)
def test_auto_resolves_per_backend(monkeypatch, backend, dtype, expected):
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  assert attention.resolve("auto", dtype) == expected
  assert attention.resolve("xla", dtype) == "xla"  # a named kernel is taken as named


def test_auto_falls_back_where_the_kernel_cannot_go(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  call = functools.partial(attention.choose, dtype=jnp.bfloat16, decode=False, q_len=256)
  assert call("auto", bias=None, kv_len=256) == "splash"
  assert call("auto", bias=jnp.zeros(()), kv_len=256) == "xla"  # T5's relative bias
  assert call("auto", bias=None, kv_len=200) == "xla"  # not a multiple of 128
  assert attention.choose("auto", jnp.bfloat16, bias=None, decode=True, q_len=1, kv_len=256) == (
    "xla"
  )
  with pytest.raises(ValueError, match="cannot take an additive attention bias"):
    call("splash", bias=jnp.zeros(()), kv_len=256)


def test_bad_combinations_are_config_errors(monkeypatch):
  f32 = gpt.GPTConfig(attention_impl="cudnn")
  bf16 = dataclasses.replace(f32, dtype="bfloat16")
  with pytest.raises(ConfigError, match="needs an NVIDIA GPU"):
    validation.check_attention(bf16)
  with pytest.raises(ConfigError, match="TPU kernel.*splash_interpret"):
    validation.check_attention(gpt.GPTConfig(attention_impl="splash"))
  validation.check_attention(gpt.GPTConfig(attention_impl="splash_interpret"), seq_len=256)
  with pytest.raises(ConfigError, match="multiple of 128"):
    validation.check_attention(gpt.GPTConfig(attention_impl="splash_interpret"), seq_len=100)
  t5 = dataclasses.replace(encdec.PRESETS["t5_tiny"], attention_impl="splash_interpret")
  with pytest.raises(ConfigError, match="no additive bias"):
    validation.check_attention(t5)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  with pytest.raises(ConfigError, match="bfloat16 or float16"):
    validation.check_attention(f32)
  validation.check_attention(bf16)
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  validation.check_attention(gpt.GPTConfig(attention_impl="splash"), seq_len=1024)
