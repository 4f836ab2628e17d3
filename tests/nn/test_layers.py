"""Properties of flaxlm.nn.layers: masks, positions, grouped-query attention and the KV cache."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxlm.nn import layers

B, T, D = 2, 8, 32
CFG = layers.AttentionConfig(embed_dim=D, num_heads=4, num_kv_heads=4, head_dim=8)
ROPE = dataclasses.replace(CFG, position="rope")


def _inputs(seed=0, batch=B, length=T):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, length, D)), jnp.float32)


def _positions(batch=B, length=T):
  return jnp.broadcast_to(jnp.arange(length), (batch, length))


def _causal_mask(positions):
  return layers.attention_mask(
    None, None, causal=True, q_positions=positions, kv_positions=positions
  )


def _init(module, *args, seed=1, **kwargs):
  """Random parameters of the right shapes, drawn with numpy: cheaper to build than `init`,
  whose threefry kernels take seconds to compile on CPU."""
  abstract = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **kwargs)["params"])
  rng = np.random.default_rng(seed)
  draw = lambda a: jnp.asarray(rng.normal(scale=0.2, size=a.shape), a.dtype)
  return jax.tree.map(draw, nn.meta.unbox(abstract))


def _apply(module, variables, *args, **kwargs):
  """module.apply, jitted: one compile instead of one per primitive."""
  return jax.jit(module.apply, static_argnames="mutable")(variables, *args, **kwargs)


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("config", [CFG, ROPE], ids=["learned", "rope"])
def test_causal_attention_ignores_the_future(config):
  attn = layers.Attention(config)
  x, pos = _inputs(), _positions()
  params = _init(attn, x, _causal_mask(pos), pos)
  t = 5
  x2 = x.at[:, t].add(1.0)  # change token t only
  y = _apply(
    attn,
    {"params": params},
    jnp.concatenate([x, x2]),
    _causal_mask(_positions(2 * B)),
    _positions(2 * B),
  )
  y1, y2 = y[:B], y[B:]
  np.testing.assert_allclose(y1[:, :t], y2[:, :t], atol=1e-6)
  assert np.all(np.abs(y1[:, t:] - y2[:, t:]).max(axis=-1) > 1e-4)  # t and after do change


def test_bidirectional_attention_sees_later_tokens():
  assert layers.attention_mask(None, None, causal=False) is None
  attn = layers.Attention(CFG)
  x = _inputs()
  seg = jnp.ones((B, T), jnp.int32)
  mask = layers.attention_mask(seg, seg, causal=False)
  assert mask.shape == (B, 1, T, T) and bool(mask.all())
  params = _init(attn, x, mask)
  y1 = _apply(attn, {"params": params}, x, mask)
  y2 = _apply(attn, {"params": params}, x.at[:, -1].add(1.0), mask)
  assert np.all(np.abs(y1 - y2).max(axis=-1) > 1e-4)  # every position, the first included


@pytest.mark.parametrize("causal", [True, False])
def test_packed_segments_match_separate_sequences(causal):
  """Two sequences packed in one row (plus padding) give the outputs each gives alone."""
  attn = layers.Attention(ROPE)
  x = _inputs(batch=1)
  seg = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]])
  pos = jnp.array([[0, 1, 2, 0, 1, 2, 3, 0]])  # per-segment positions, as the packer writes them
  mask = layers.attention_mask(seg, seg, causal, pos, pos)
  params = _init(attn, x, mask, pos)
  packed = _apply(attn, {"params": params}, x, mask, pos)
  assert np.isfinite(packed).all()  # the fully masked padding query must not produce NaN
  for start, stop in [(0, 3), (3, 7)]:
    alone_x, alone_pos = x[:, start:stop], pos[:, start:stop]
    alone_mask = _causal_mask(alone_pos) if causal else None
    alone = _apply(attn, {"params": params}, alone_x, alone_mask, alone_pos)
    np.testing.assert_allclose(packed[:, start:stop], alone, atol=1e-5)


def test_padding_is_never_attended():
  attn = layers.Attention(CFG)
  x = _inputs()
  seg = jnp.array([[1] * 6 + [0] * 2, [1] * 3 + [0] * 5])
  mask = layers.attention_mask(seg, seg, causal=False)
  params = _init(attn, x, mask)
  noisy = jnp.where((seg == 0)[..., None], 100.0 * _inputs(seed=9), x)  # new padding content
  y1 = _apply(attn, {"params": params}, x, mask)
  y2 = _apply(attn, {"params": params}, noisy, mask)
  real = np.asarray(seg != 0)
  np.testing.assert_allclose(np.asarray(y1)[real], np.asarray(y2)[real], atol=1e-5)


# ----------------------------------------------------------------------------- positions


def test_rope_scores_depend_only_on_relative_position():
  h = 16
  q, k = np.random.default_rng(0).normal(size=(2, h)).astype(np.float32)
  rope = jax.jit(layers.apply_rope, static_argnums=2)

  def scores(q_pos, k_pos):  # q . k after rotating q to each q_pos and k to each k_pos
    rot = lambda v, p: rope(jnp.broadcast_to(v, (1, len(p), 1, h)), jnp.array([p]), 10_000.0)
    return np.sum(np.asarray(rot(q, q_pos) * rot(k, k_pos)), axis=-1).ravel()

  starts = [3, 10, 57, 300]
  for offset in [0, 1, 5, -3]:
    s = scores([m + offset for m in starts], starts)
    np.testing.assert_allclose(s, s[0], rtol=1e-4, atol=1e-4)
  s = scores([0, 1, 4, 9], [0, 0, 0, 0])
  assert np.all(np.abs(np.diff(s)) > 1e-3)  # and the score does depend on the offset
  x = jnp.broadcast_to(q, (1, 4, 1, h))
  rotated = rope(x, jnp.array([[0, 1, 7, 123]]), 10_000.0)
  np.testing.assert_allclose(rotated[0, 0], x[0, 0], atol=1e-7)  # position 0: identity
  np.testing.assert_allclose(
    np.linalg.norm(rotated, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5
  )


def test_sinusoidal_table():
  length, dim = 50, 16
  table = layers.sinusoidal_table(length, dim)
  assert table.shape == (length, dim)
  half = dim // 2
  np.testing.assert_allclose(table[0], [0.0] * half + [1.0] * half, atol=1e-7)
  # Each (sin, cos) pair lies on the unit circle; the fastest pair turns 1 radian per position,
  # the slowest 1/10000.
  np.testing.assert_allclose(table[:, :half] ** 2 + table[:, half:] ** 2, 1.0, atol=1e-5)
  pos = np.arange(length)
  np.testing.assert_allclose(table[:, 0], np.sin(pos), atol=1e-5)
  np.testing.assert_allclose(table[:, half - 1], np.sin(pos / 10_000.0), atol=1e-5)
  np.testing.assert_allclose(table[:, half], np.cos(pos), atol=1e-5)
  # Strictly decreasing frequencies: distinct positions get distinct rows.
  assert len({tuple(np.round(r, 4)) for r in np.asarray(table)}) == length


# ----------------------------------------------------------------------------- grouped-query


def test_grouped_query_equals_multi_head_with_repeated_kv():
  gqa_cfg = dataclasses.replace(ROPE, num_kv_heads=2)
  x, pos = _inputs(), _positions()
  mask = _causal_mask(pos)
  gqa_params = _init(layers.Attention(gqa_cfg), x, mask, pos)
  assert gqa_params["key"]["kernel"].shape == (D, 2, 8)
  assert gqa_params["query"]["kernel"].shape == (D, 4, 8)
  # Query head n reads kv head n // (N / K): repeat each kv head N / K times.
  mha_params = dict(gqa_params)
  for name in ("key", "value"):
    mha_params[name] = jax.tree.map(lambda a: jnp.repeat(a, 2, axis=-2), gqa_params[name])
  y_gqa = _apply(layers.Attention(gqa_cfg), {"params": gqa_params}, x, mask, pos)
  y_mha = _apply(layers.Attention(ROPE), {"params": mha_params}, x, mask, pos)
  np.testing.assert_allclose(y_gqa, y_mha, atol=1e-5)


# ----------------------------------------------------------------------------- implementations


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("masking", ["causal", "padding", "none"])
def test_einsum_attention_equals_jax_dot_product_attention(kv_heads, masking):
  """Values and gradients, with a T5-style bias, masks that leave a query nothing to see
  (a padding row) and grouped kv heads."""
  rng = np.random.default_rng(0)
  n, h, s = 4, 8, 6
  q = jnp.asarray(rng.normal(size=(B, T, n, h)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(B, s, kv_heads, h)), jnp.float32) for _ in range(2))
  bias = jnp.asarray(rng.normal(size=(1, n, T, s)), jnp.float32)
  if masking == "causal":
    mask = jnp.tril(jnp.ones((T, s), bool))[None, None].repeat(B, 0)
  elif masking == "padding":
    q_seg = jnp.array([[1] * T, [1] * 5 + [0] * 3])
    kv_seg = jnp.array([[1] * s, [1] * 4 + [0] * 2])
    mask = layers.attention_mask(q_seg, kv_seg, causal=False)
  else:
    mask = None

  def loss(fn, q, k, v, bias):
    out = fn(q, k, v, mask, bias)
    return jnp.sum(out * jnp.cos(out)), out

  ref = lambda q, k, v, mask, bias: jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)
  grads = {}
  for name, fn in [("xla", ref), ("einsum", layers.einsum_attention)]:
    grad_fn = jax.jit(jax.grad(functools.partial(loss, fn), argnums=(0, 1, 2, 3), has_aux=True))
    grads[name] = grad_fn(q, k, v, bias)
  (g_ref, out_ref), (g_ein, out_ein) = grads["xla"], grads["einsum"]
  assert np.isfinite(out_ein).all()
  np.testing.assert_allclose(out_ein, out_ref, atol=1e-5)
  for a, b in zip(g_ein, g_ref, strict=True):
    np.testing.assert_allclose(a, b, atol=1e-4)


# ----------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize(
  "config",
  [
    CFG,
    dataclasses.replace(ROPE, num_kv_heads=2, attention_impl="xla"),
    dataclasses.replace(ROPE, num_kv_heads=2, attention_impl="einsum"),
  ],
  ids=["mha_auto", "gqa_rope_xla", "gqa_rope_einsum"],
)
def test_kv_cache_decoding_equals_full_causal_forward(config):
  x, pos = _inputs(), _positions()
  params = _init(layers.Attention(config), x, _causal_mask(pos), pos)
  full = _apply(layers.Attention(config), {"params": params}, x, _causal_mask(pos), pos)

  dec = layers.Attention(config, decode=True)
  # `init` sizes the cache from its input: T slots.
  cache = jax.eval_shape(lambda: dec.init(jax.random.PRNGKey(0), x, None, pos)["cache"])
  cache = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), cache)
  step = jax.jit(
    lambda cache, xs, ps: dec.apply(
      {"params": params, "cache": cache}, xs, None, ps, mutable="cache"
    )
  )
  outs = []
  y, mutated = step(cache, x[:, :3], pos[:, :3])  # prefill 3 tokens, then one at a time
  outs.append(y)
  cache = mutated["cache"]
  for t in range(3, T):
    y, mutated = step(cache, x[:, t : t + 1], pos[:, t : t + 1])
    outs.append(y)
    cache = mutated["cache"]
  assert int(cache["cache_index"]) == T
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5)


def test_cached_cross_attention_equals_uncached():
  x, src = _inputs(), _inputs(seed=3, length=5)
  params = _init(layers.Attention(CFG), x, None, kv=src)
  full = _apply(layers.Attention(CFG), {"params": params}, x, None, kv=src)

  dec = layers.Attention(CFG, decode=True)
  # The first decode call projects the source and caches its keys and values.
  y0, mutated = _apply(dec, {"params": params}, x[:, :1], None, kv=src, mutable="cache")
  cache = mutated["cache"]
  assert cache["cross_key"].shape == (B, 5, 4, 8)
  outs = [y0]
  for t in range(1, T):
    # A different source now: the output must still come from the cached one.
    y, mutated = _apply(
      dec,
      {"params": params, "cache": cache},
      x[:, t : t + 1],
      None,
      kv=jnp.zeros_like(src),
      mutable="cache",
    )
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5)
