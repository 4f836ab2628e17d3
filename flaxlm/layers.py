"""Transformer building blocks shared by every model family.

Owns attention (causal, bidirectional, cross; grouped-query; padding and packed-segment
masks; KV cache), position encodings (learned, sinusoidal, RoPE), norms and MLPs.
Every parameter carries logical axis names; `flaxlm.sharding` maps them to mesh axes.

Shape letters used throughout:
  B batch, T query length, S key length, D embed_dim, N query heads, K kv heads,
  H head_dim, F mlp_dim, V vocab.

References: Vaswani et al. 2017 (attention, sinusoids); Su et al. 2021 (RoPE);
Ainslie et al. 2023 (GQA); Zhang & Sennrich 2019 (RMSNorm); Shazeer 2020 (SwiGLU).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

# Logical names for activations (parameters use 'embed', 'heads', ... directly).
ACT_BTD = ("activation_batch", "activation_length", "activation_embed")
ACT_BTNH = ("activation_batch", "activation_length", "activation_heads", None)


def logical_init(init: Callable, axes: tuple[str | None, ...]) -> Callable:
  """An initializer whose parameter is annotated with logical axis names."""
  return nn.with_logical_partitioning(init, axes)


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """What attention needs to know; a model config hands down its own copy of these."""

  embed_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  use_bias: bool = True
  position: str = "learned"  # rope is applied inside attention; the rest outside
  rope_theta: float = 10_000.0
  attention_impl: str = "auto"  # see ATTENTION_IMPLS
  dtype: jnp.dtype = jnp.float32
  init_std: float = 0.02
  out_init_std: float = 0.02  # GPT-2 scales residual projections by 1/sqrt(2 * layers)


# ----------------------------------------------------------------------------- positions


def sinusoidal_table(length: int, dim: int, max_timescale: float = 10_000.0) -> Array:
  """(length, dim) sin/cos table of Vaswani et al. (sin in the first half, cos in the second)."""
  half = dim // 2
  inv = jnp.exp(-jnp.log(max_timescale) * jnp.arange(half) / max(half - 1, 1))
  angles = jnp.arange(length)[:, None] * inv[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def apply_rope(x: Array, positions: Array, theta: float) -> Array:
  """Rotates pairs (x[..., i], x[..., i + H/2]) by position-dependent angles. x: (B, T, N, H)."""
  half = x.shape[-1] // 2
  freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)  # (H/2,)
  angles = positions[..., None].astype(jnp.float32) * freq  # (B, T, H/2)
  sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class LearnedPositions(nn.Module):
  """Absolute position embeddings (GPT-2, BERT)."""

  max_len: int
  embed_dim: int
  init_std: float = 0.02

  @nn.compact
  def __call__(self, positions: Array) -> Array:
    table = self.param(
      "embedding",
      logical_init(nn.initializers.normal(self.init_std), ("max_len", "embed")),
      (self.max_len, self.embed_dim),
    )
    return jnp.take(table, positions, axis=0)


# ----------------------------------------------------------------------------- masks


def attention_mask(
  q_segment_ids: Array | None,
  kv_segment_ids: Array | None,
  causal: bool,
  q_positions: Array | None = None,
  kv_positions: Array | None = None,
) -> Array | None:
  """Boolean (B, 1, T, S) mask, True where a query may attend; None when nothing is masked.

  Segment ids: 0 marks padding, equal non-zero ids mark tokens of one packed sequence.
  Causality compares positions, so it also holds inside packed segments and a KV cache.
  """
  mask = None
  if q_segment_ids is not None and kv_segment_ids is not None:
    same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    mask = same & (kv_segment_ids[:, None, :] != 0)
  if causal:
    assert q_positions is not None and kv_positions is not None
    c = q_positions[:, :, None] >= kv_positions[:, None, :]
    mask = c if mask is None else mask & c
  return None if mask is None else mask[:, None, :, :]


# ----------------------------------------------------------------------------- projections


class Einsum(nn.Module):
  """y = einsum(equation, x, kernel) + bias, kernel of `shape` named by `axes`.

  The bias covers the kernel's output axes (those after the contracted ones)."""

  equation: str
  shape: tuple[int, ...]
  axes: tuple[str | None, ...]
  use_bias: bool = True
  init_std: float = 0.02
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param(
      "kernel", logical_init(nn.initializers.normal(self.init_std), self.axes), self.shape
    )
    y = jnp.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      out_letters = self.equation.split("->")[1]
      kernel_letters = self.equation.split(",")[1].split("->")[0]
      n_out = sum(1 for ch in kernel_letters if ch in out_letters)
      bias_shape, bias_axes = self.shape[-n_out:], self.axes[-n_out:]
      bias = self.param("bias", logical_init(nn.initializers.zeros, bias_axes), bias_shape)
      y = y + bias.astype(self.dtype)
    return y


# ----------------------------------------------------------------------------- attention


def einsum_attention(
  q: Array,  # (B, T, N, H)
  k: Array,  # (B, S, K, H)
  v: Array,  # (B, S, K, H)
  mask: Array | None,  # (B, 1, T, S) bool
  bias: Array | None,  # (B or 1, N, T, S)
) -> Array:
  """softmax(q k^T / sqrt(H) + bias) v, normalized after the value product: (B, T, N, H).

  Same result as `jax.nn.dot_product_attention`, but the softmax denominator divides the
  (B, T, N, H) output instead of the (B, N, T, S) probabilities, which spares a full pass
  over the scores and the matching reduction in the backward pass (~10% of a small model's
  train step on CPU). Query groups of K kv heads share them (grouped-query attention).
  """
  b, t, n, h = q.shape
  kv_heads = k.shape[2]
  q = q.reshape(b, t, kv_heads, n // kv_heads, h) * jnp.asarray(h**-0.5, q.dtype)
  scores = jnp.einsum("BTKGH,BSKH->BKGTS", q, k).astype(jnp.float32)
  if bias is not None:
    scores = scores + bias.reshape(bias.shape[0], kv_heads, n // kv_heads, *bias.shape[2:])
  if mask is not None:
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
  # Subtracting the row max keeps exp() in range; it cancels in the ratio, so no gradient.
  scores = scores - jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True))
  weights = jnp.exp(scores)  # unnormalized
  out = jnp.einsum("BKGTS,BSKH->BTKGH", weights.astype(v.dtype), v)
  denom = jnp.einsum("BKGTS->BTKG", weights)[..., None]
  return (out / denom.astype(out.dtype)).reshape(b, t, n, h)


# 'xla' and 'cudnn' are jax.nn.dot_product_attention's; 'einsum' is `einsum_attention`;
# 'auto' is 'einsum' on CPU (measured faster there) and 'xla' on GPU/TPU.
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "einsum")


def resolve_attention_impl(impl: str) -> str:
  if impl == "auto":
    return "einsum" if jax.default_backend() == "cpu" else "xla"
  return impl


class Attention(nn.Module):
  """Multi-head / grouped-query attention over `jax.nn.dot_product_attention` (on GPU/TPU) or
  `einsum_attention` (on CPU), as `config.attention_impl` selects.

  Self-attention when `kv` is None, cross-attention otherwise. With `decode=True` keys and
  values go to a cache in the 'cache' collection: the first call (at `init`) sizes it from
  the input length, later calls write at `cache_index` and attend to everything written.
  Cross-attention caches the projected source keys/values on the first decode call.
  """

  config: AttentionConfig
  decode: bool = False

  def _project(self, x: Array, heads: int, name: str) -> Array:
    c = self.config
    head_axis = "heads" if name == "query" else "kv_heads"
    return Einsum(
      "BTD,DNH->BTNH",
      (c.embed_dim, heads, c.head_dim),
      ("embed", head_axis, "head_dim"),
      use_bias=c.use_bias,
      init_std=c.init_std,
      dtype=c.dtype,
      name=name,
    )(x)

  @nn.compact
  def __call__(
    self,
    x: Array,  # (B, T, D)
    mask: Array | None,  # (B, 1, T, S) bool, or None
    positions: Array | None = None,  # (B, T), for RoPE
    kv: Array | None = None,  # (B, S, D) for cross-attention
    bias: Array | None = None,  # (B or 1, N, T, S) additive, e.g. T5 relative positions
  ) -> Array:
    c = self.config
    cross = kv is not None
    q = self._project(x, c.num_heads, "query")  # (B, T, N, H)
    if cross and self.decode and self.has_variable("cache", "cross_key"):
      k = self.get_variable("cache", "cross_key")
      v = self.get_variable("cache", "cross_value")
    else:
      src = kv if cross else x
      k = self._project(src, c.num_kv_heads, "key")  # (B, S, K, H)
      v = self._project(src, c.num_kv_heads, "value")
      if cross and self.decode:
        self.variable("cache", "cross_key", lambda: k)
        self.variable("cache", "cross_value", lambda: v)
    if c.position == "rope" and not cross:
      q = apply_rope(q, positions, c.rope_theta)
      k = apply_rope(k, positions, c.rope_theta)
    q = nn.with_logical_constraint(q, ACT_BTNH)
    if self.decode and not cross:
      k, v, mask = self._update_cache(k, v, mask)
    impl = resolve_attention_impl(c.attention_impl)
    if impl == "einsum":
      out = einsum_attention(q, k, v, mask, bias)  # (B, T, N, H)
    else:
      out = jax.nn.dot_product_attention(
        q, k, v, bias=bias, mask=mask, implementation=None if impl == "xla" else impl
      )
    out = Einsum(
      "BTNH,NHD->BTD",
      (c.num_heads, c.head_dim, c.embed_dim),
      ("heads", "head_dim", "embed"),
      use_bias=c.use_bias,
      init_std=c.out_init_std,
      dtype=c.dtype,
      name="out",
    )(out)
    return nn.with_logical_constraint(out, ACT_BTD)

  def _update_cache(self, k: Array, v: Array, mask: Array | None):
    """Writes k, v (B, T, K, H) at cache_index; returns the full cache and its mask."""
    initialized = self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not initialized:  # `init` only sizes the cache: (B, max_decode_len, K, H)
      return k, v, mask
    i = index.value
    t, cache_len = k.shape[1], cached_k.value.shape[1]
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, i, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, i, 0, 0))
    index.value = i + t
    # Query j (absolute position i + j) sees cache slots <= i + j; later slots are empty.
    q_pos = i + jnp.arange(t)
    visible = jnp.arange(cache_len)[None, :] <= q_pos[:, None]  # (T, S)
    cache_mask = visible[None, None]
    if mask is not None:  # a caller's (B, 1, T, S) padding mask over the cache slots
      cache_mask = cache_mask & mask
    return cached_k.value, cached_v.value, cache_mask


# ----------------------------------------------------------------------------- norms and MLPs


def make_norm(kind: str, use_bias: bool, eps: float, dtype, name: str) -> nn.Module:
  scale_init = logical_init(nn.initializers.ones, ("norm",))
  if kind == "rmsnorm":
    return nn.RMSNorm(epsilon=eps, dtype=dtype, scale_init=scale_init, name=name)
  if kind == "layernorm":
    return nn.LayerNorm(
      epsilon=eps,
      dtype=dtype,
      use_bias=use_bias,
      scale_init=scale_init,
      bias_init=logical_init(nn.initializers.zeros, ("norm",)),
      name=name,
    )
  raise ValueError(f"unknown norm {kind!r}; choose 'layernorm' or 'rmsnorm'")


ACTIVATIONS = {
  "gelu": lambda x: nn.gelu(x, approximate=True),
  "gelu_exact": lambda x: nn.gelu(x, approximate=False),
  "relu": nn.relu,
  "silu": nn.silu,
}


class MLP(nn.Module):
  """Position-wise feed-forward: act(x W_in) W_out, or gated act(x W_gate) * (x W_up) W_out."""

  embed_dim: int
  mlp_dim: int
  activation: str = "gelu"
  gated: bool = False  # SwiGLU (silu) / GeGLU (gelu)
  use_bias: bool = True
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  init_std: float = 0.02
  out_init_std: float = 0.02

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    dense = lambda features, axes, std, name: nn.Dense(
      features,
      use_bias=self.use_bias,
      dtype=self.dtype,
      kernel_init=logical_init(nn.initializers.normal(std), axes),
      bias_init=logical_init(nn.initializers.zeros, axes[-1:]),
      name=name,
    )
    act = ACTIVATIONS[self.activation]
    h = act(dense(self.mlp_dim, ("embed", "mlp"), self.init_std, "wi")(x))  # (B, T, F)
    if self.gated:
      h = h * dense(self.mlp_dim, ("embed", "mlp"), self.init_std, "wi_up")(x)
    h = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return dense(self.embed_dim, ("mlp", "embed"), self.out_init_std, "wo")(h)


class Embedder(nn.Module):
  """Token embedding; `attend` gives tied output logits (B, T, V)."""

  vocab_size: int
  embed_dim: int
  dtype: jnp.dtype = jnp.float32
  init_std: float = 0.02

  def setup(self):
    self.embedding = self.param(
      "embedding",
      logical_init(nn.initializers.normal(self.init_std), ("vocab", "embed")),
      (self.vocab_size, self.embed_dim),
    )

  def __call__(self, tokens: Array) -> Array:
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, x: Array) -> Array:
    return jnp.einsum("BTD,VD->BTV", x, self.embedding.astype(self.dtype))
