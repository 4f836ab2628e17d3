"""Transformer building blocks shared by every model family.

Owns the attention layer (causal, bidirectional, cross; grouped-query; KV cache; the kernels
and masks it runs live in `flaxlm.nn.attention`), position encodings (learned, sinusoidal,
RoPE), norms and MLPs. Matmul outputs carry `checkpoint_name` tags (query_proj, key_proj,
value_proj, context, out_proj, mlpwi, mlpwi_up, mlpwo) that named remat policies keep or
recompute (`flaxlm.models.transformer.REMAT_POLICIES`).
Every parameter carries logical axis names; `flaxlm.nn.sharding` maps them to mesh axes.

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
from jax.ad_checkpoint import checkpoint_name

from flaxlm.nn import attention

# Re-exported: the kernels and masks moved to flaxlm.nn.attention.
from flaxlm.nn.attention import attention_mask, einsum_attention  # noqa: F401
from flaxlm.nn.projection import Projection, dense

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
  attention_impl: str = "auto"  # see flaxlm.nn.attention.IMPLS
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


# ----------------------------------------------------------------------------- attention


# The collection an `apply(..., mutable=[MAPS])` fills with every attention layer's
# probabilities (B, N, T, S) under 'probs' (flaxlm.explain.attention).
MAPS = "attention_maps"
# The token embeddings (B, T, D) a model looks up are recorded in PROBES when that collection
# is mutable, and shifted by the array of the same name in SHIFTS when one is given: gradients
# and interpolations over the embeddings without another entry point (flaxlm.explain.attribute).
PROBES, SHIFTS = "embedding_probes", "embedding_shifts"


def probe_embeddings(module: nn.Module, x: Array, name: str = "tokens") -> Array:
  """`x` (B, T, D) looked up by `module`: recorded, and shifted when asked (see PROBES)."""
  if not module.is_initializing():  # `init` returns parameters only
    module.sow(PROBES, name, x)
  if module.has_variable(SHIFTS, name):
    x = x + module.get_variable(SHIFTS, name).astype(x.dtype)
  return x


# Logical names of the KV cache, so that it shards like the activations it holds.
CACHE_AXES = ("cache_batch", "cache_length", "cache_kv_heads", "cache_head_dim")


class Attention(nn.Module):
  """Multi-head / grouped-query attention; `config.attention_impl` picks the kernel (see
  `flaxlm.nn.attention`: einsum on CPU, splash on TPU, cuDNN on GPU).

  Self-attention when `kv` is None, cross-attention otherwise. `mask` is an
  `attention.Masking` (structure: what fused kernels take) or a dense (B, 1, T, S) array.
  With `decode=True` keys and values go to a cache in the 'cache' collection: the first
  call (at `init`) sizes it from the input length, later calls write at `cache_index`;
  each slot keeps its token's position + 1 (0: empty or padding, so a zero-filled cache is
  empty), and a query sees the filled slots whose position is at most its own: rows of one
  batch may sit at different positions (prompts of different lengths, padded).
  Cross-attention caches the projected source keys/values on the first decode call.
  """

  config: AttentionConfig
  decode: bool = False

  def _project(self, x: Array, heads: int, name: str) -> Array:
    c = self.config
    head_axis = "heads" if name == "query" else "kv_heads"
    y = Projection(  # (B, T, D) -> (B, T, N or K, H)
      (heads, c.head_dim),
      ("embed", head_axis, "head_dim"),
      use_bias=c.use_bias,
      init_std=c.init_std,
      dtype=c.dtype,
      name=name,
    )(x)
    return checkpoint_name(y, f"{name}_proj")  # remat policies keep or drop it by name

  @nn.compact
  def __call__(
    self,
    x: Array,  # (B, T, D)
    mask: attention.Masking | Array | None,
    positions: Array | None = None,  # (B, T), for RoPE and the KV cache
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
      k, v, mask = self._update_cache(k, v, mask, positions)
    # `init` (often on a few tokens) only shapes the parameters: any kernel does.
    impl = "auto" if self.is_initializing() else c.attention_impl
    if self.is_mutable_collection(MAPS) and not self.is_initializing():
      # Attention maps asked for (flaxlm.explain): the probabilities are materialized and the
      # values weighed by them, so the maps are this forward pass's own.
      dense = mask.dense_mask() if isinstance(mask, attention.Masking) else mask
      probs = attention.probabilities(q, k, dense, bias)  # (B, N, T, S)
      self.sow(MAPS, "probs", probs)
      out = attention.weighted_values(probs, v)
    else:
      out = attention.attend(q, k, v, mask, bias, impl, decode=self.decode)
    out = checkpoint_name(out, "context")  # (B, T, N, H)
    out = Projection(  # (B, T, N, H) -> (B, T, D)
      (c.embed_dim,),
      ("heads", "head_dim", "embed"),
      contract=2,
      use_bias=c.use_bias,
      init_std=c.out_init_std,
      dtype=c.dtype,
      name="out",
    )(out)
    out = checkpoint_name(out, "out_proj")
    return nn.with_logical_constraint(out, ACT_BTD)

  def _update_cache(self, k: Array, v: Array, mask, positions: Array | None):
    """Writes k, v (B, T, K, H) and their positions at cache_index; returns the whole cache
    and the (B, 1, T, S) mask of the slots each query sees."""
    initialized = self.has_variable("cache", "cached_key")
    zeros = logical_init(jnp.zeros, CACHE_AXES)
    cached_k = self.variable("cache", "cached_key", zeros, k.shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", zeros, v.shape, v.dtype)
    slots = self.variable(
      "cache", "cached_positions", logical_init(jnp.zeros, CACHE_AXES[:2]), k.shape[:2], jnp.int32
    )
    index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not initialized:  # `init` only sizes the cache: (B, max_decode_len, K, H)
      return k, v, mask
    i = index.value
    b, t = k.shape[:2]
    if positions is None:  # every row at the cache index
      positions = jnp.broadcast_to(i + jnp.arange(t), (b, t))
    segments = mask.q_segment_ids if isinstance(mask, attention.Masking) else None
    stored = positions + 1 if segments is None else jnp.where(segments != 0, positions + 1, 0)
    write = lambda cache, new: nn.with_logical_constraint(
      jax.lax.dynamic_update_slice(cache, new, (0, i) + (0,) * (new.ndim - 2)),
      CACHE_AXES[: new.ndim],
    )
    cached_k.value = write(cached_k.value, k)
    cached_v.value = write(cached_v.value, v)
    slots.value = write(slots.value, stored.astype(jnp.int32))
    index.value = i + t
    # A query sees the filled slots at or before its position (empty and padding ones never).
    filled = slots.value[:, None, :]  # (B, 1, S)
    cache_mask = ((filled > 0) & (filled <= positions[:, :, None] + 1))[:, None]  # (B, 1, T, S)
    if mask is not None and not isinstance(mask, attention.Masking):
      cache_mask = cache_mask & mask  # a caller's (B, 1, T, S) mask over the cache slots
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
    project = lambda features, axes, std, name: dense(
      features, axes, name, use_bias=self.use_bias, init_std=std, dtype=self.dtype
    )
    act = ACTIVATIONS[self.activation]
    wide = lambda name: checkpoint_name(
      project(self.mlp_dim, ("embed", "mlp"), self.init_std, name)(x), f"mlp{name}"
    )
    h = act(wide("wi"))  # (B, T, F)
    if self.gated:
      h = h * wide("wi_up")
    h = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    out = project(self.embed_dim, ("mlp", "embed"), self.out_init_std, "wo")(h)
    return checkpoint_name(out, "mlpwo")


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

  def __call__(self, tokens: Array, probe: str = "tokens") -> Array:
    """(B, T) -> (B, T, D); `probe` names the lookup for PROBES / SHIFTS (an encoder-decoder
    shares one embedder between its source and target)."""
    return probe_embeddings(
      self, jnp.take(self.embedding, tokens, axis=0).astype(self.dtype), probe
    )

  def attend(self, x: Array) -> Array:
    return jnp.einsum("BTD,VD->BTV", x, self.embedding.astype(self.dtype))
