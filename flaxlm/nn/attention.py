"""Attention kernels, and who may attend to whom passed as structure rather than as a mask.

A `Masking` says it structurally: causal or not, packed segments (segment ids, 0 = padding),
per-row lengths of right-padded rows, and the positions a KV cache compares. Each kernel
takes what it understands:

  einsum            flaxlm's reference (`einsum_attention`); a dense (B, 1, T, S) mask; CPU
  xla               `jax.nn.dot_product_attention`'s XLA path; a dense mask
  cudnn             cuDNN's fused flash attention (NVIDIA, bf16/f16) through
                    `jax.nn.dot_product_attention`: `is_causal` and per-row
                    `query_seq_lengths`/`key_value_seq_lengths`; packed segments, which
                    that API cannot express, go in as a mask (JAX turns it into a bias)
  splash            Pallas splash attention (TPU): a causal or full block mask whose
                    all-masked blocks are skipped, and segment ids (padding is segment 0)
  splash_interpret  the same Pallas program run by the Pallas interpreter on any backend:
                    slow, for tests on CPU

`auto` takes splash on TPU, cuDNN on GPU when the compute dtype is bf16 or f16, einsum on
CPU and xla otherwise. Where a kernel cannot take a call (an additive bias such as T5's
relative positions, KV-cache decoding, lengths that are not multiples of 128 for splash)
`auto` uses the reference path; an explicit kernel name raises instead.

Structural kernels compare indices, not positions: they assume positions increase by one
along each segment, which holds for every batch flaxlm builds (a KV cache compares its
stored positions on the reference path).

References: Dao et al. 2022 (FlashAttention); the splash kernel in
`jax.experimental.pallas.ops.tpu.splash_attention` and its use in MaxText.
"""

from __future__ import annotations

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

IMPLS = ("auto", "xla", "cudnn", "einsum", "splash", "splash_interpret")
SPLASH = ("splash", "splash_interpret")
# Kernels whose causal mask skips the all-masked blocks (MaxText's MFU convention fits them).
SKIP_MASKED_BLOCKS = ("cudnn", *SPLASH)
SPLASH_BLOCK = 128  # the kernel's lane width: sequence lengths must be multiples of it


def resolve(impl: str, dtype=jnp.float32) -> str:
  """The kernel `impl` names on this backend ('auto' decided here)."""
  if impl != "auto":
    return impl
  backend = jax.default_backend()
  if backend == "tpu":
    return "splash"
  if backend in ("gpu", "cuda") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  return "einsum" if backend == "cpu" else "xla"


def reference_impl() -> str:
  """The mask-array path of this backend (measured faster on CPU: einsum)."""
  return "einsum" if jax.default_backend() == "cpu" else "xla"


def splash_refusal(bias, decode: bool, q_len: int, kv_len: int) -> str:
  """Why splash cannot take this call ('' when it can)."""
  if bias is not None:
    return "an additive attention bias (e.g. T5 relative positions)"
  if decode:
    return "KV-cache decoding"
  if q_len % SPLASH_BLOCK or kv_len % SPLASH_BLOCK:
    return f"lengths {q_len}, {kv_len} that are not multiples of {SPLASH_BLOCK}"
  return ""


def choose(impl: str, dtype, *, bias, decode: bool, q_len: int, kv_len: int) -> str:
  """The kernel one attention call runs: `resolve(impl)`, or the reference path where
  that kernel cannot take the call (raising if the kernel was named explicitly)."""
  kernel = resolve(impl, dtype)
  if decode and kernel not in ("einsum", "xla"):
    return reference_impl()  # the cache's position mask is an array
  if kernel in SPLASH:
    why = splash_refusal(bias, decode, q_len, kv_len)
    if why and impl == "auto":
      return reference_impl()
    if why:
      raise ValueError(f"attention_impl={impl!r} cannot take {why}; use 'auto' or 'xla'")
  return kernel


# ----------------------------------------------------------------------------- masking


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


def segments_from_lengths(lengths: Array, length: int) -> Array:
  """(B,) valid tokens per right-padded row -> segment ids (B, length): 1, then 0 (padding)."""
  return (jnp.arange(length)[None, :] < lengths[:, None]).astype(jnp.int32)


@flax.struct.dataclass
class Masking:
  """Who may attend to whom, structurally. Build with `Masking.build`.

  Lengths, where given, describe rows that hold one right-padded sequence each; segment
  ids (derived from them in that case) describe any row, packed ones included.
  """

  q_segment_ids: Array | None = None  # (B, T) 0 = padding
  kv_segment_ids: Array | None = None  # (B, S)
  q_positions: Array | None = None  # (B, T): causality, and the KV cache's slots
  kv_positions: Array | None = None  # (B, S)
  q_lengths: Array | None = None  # (B,) int32
  kv_lengths: Array | None = None  # (B,) int32
  dense: Array | None = None  # (B, 1, T, S), precomputed once for the reference paths
  causal: bool = flax.struct.field(pytree_node=False, default=False)

  @classmethod
  def build(
    cls,
    q_segment_ids=None,
    kv_segment_ids=None,
    *,
    causal: bool,
    q_positions=None,
    kv_positions=None,
    lengths=None,
    kv_lengths=None,
    dense: bool = True,
  ) -> Masking:
    """`dense=False` leaves the mask array to be built only by a call that falls back to
    a reference path (a model knows its kernel: see `needs_dense`)."""
    if lengths is not None and kv_lengths is None:
      kv_lengths = lengths  # self-attention
    if (lengths is not None and q_positions is None) or (
      kv_lengths is not None and kv_positions is None
    ):
      raise ValueError("Masking.build: lengths need the positions that give the row length")
    if lengths is not None:
      q_segment_ids = segments_from_lengths(lengths, q_positions.shape[1])
    if kv_lengths is not None:
      kv_segment_ids = segments_from_lengths(kv_lengths, kv_positions.shape[1])
    m = cls(
      q_segment_ids, kv_segment_ids, q_positions, kv_positions, lengths, kv_lengths, None, causal
    )
    return m.replace(dense=m.dense_mask()) if dense else m

  def dense_mask(self) -> Array | None:
    if self.dense is not None:
      return self.dense
    return attention_mask(
      self.q_segment_ids, self.kv_segment_ids, self.causal, self.q_positions, self.kv_positions
    )


def needs_dense(impl: str, dtype, decode: bool = False, bias: bool = False) -> bool:
  """Whether a model's attention calls run a mask-array path (so it builds the mask once)."""
  kernel = resolve(impl, dtype)
  return decode or kernel in ("einsum", "xla") or (bias and kernel in SPLASH)


# ----------------------------------------------------------------------------- kernels


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


def probabilities(
  q: Array,  # (B, T, N, H)
  k: Array,  # (B, S, K, H)
  mask: Array | None,  # (B, 1, T, S) bool
  bias: Array | None,  # (B or 1, N, T, S)
) -> Array:
  """softmax(q k^T / sqrt(H) + bias) over the keys, as float32 (B, N, T, S): what the
  reference kernels weigh the values by, materialized (attention maps read it)."""
  h, groups = q.shape[-1], q.shape[2] // k.shape[2]
  k = jnp.repeat(k, groups, axis=2)  # query head j reads kv head j // groups
  scores = jnp.einsum("BTNH,BSNH->BNTS", q * jnp.asarray(h**-0.5, q.dtype), k).astype(jnp.float32)
  if bias is not None:
    scores = scores + bias.astype(jnp.float32)
  if mask is not None:
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(scores, axis=-1)


def weighted_values(probs: Array, v: Array) -> Array:
  """probs (B, N, T, S), v (B, S, K, H) -> (B, T, N, H)."""
  v = jnp.repeat(v, probs.shape[1] // v.shape[2], axis=2)
  return jnp.einsum("BNTS,BSNH->BTNH", probs.astype(v.dtype), v)


def structural_dot_product_attention(
  q: Array, k: Array, v: Array, masking: Masking | None, bias, implementation: str | None
) -> Array:
  """`jax.nn.dot_product_attention` told causality and lengths as arguments, not a mask.

  implementation='cudnn' on NVIDIA GPUs; None runs JAX's XLA path on the same arguments
  (which is how CPU tests check the translation)."""
  if masking is None:
    return jax.nn.dot_product_attention(q, k, v, bias=bias, implementation=implementation)
  mask = None
  if masking.q_lengths is None and masking.q_segment_ids is not None:
    # Packed segments: no length argument says it; the segment part goes in as a mask.
    mask = attention_mask(masking.q_segment_ids, masking.kv_segment_ids, causal=False)
  return jax.nn.dot_product_attention(
    q,
    k,
    v,
    bias=bias,
    mask=mask,
    is_causal=masking.causal,
    query_seq_lengths=masking.q_lengths,
    key_value_seq_lengths=masking.kv_lengths,
    implementation=implementation,
  )


def _block(length: int) -> int:
  """The largest of 512, 256, 128 dividing `length` (splash tiles)."""
  return next(b for b in (512, 256, SPLASH_BLOCK) if length % b == 0)


def _splash_kernel(heads: int, q_len: int, kv_len: int, causal: bool, interpret: bool):
  from jax.experimental.pallas.ops.tpu import splash_attention as splash

  shape = (q_len, kv_len)
  head_mask = splash.CausalMask(shape) if causal else splash.FullMask(shape)
  bq, bkv = _block(q_len), _block(kv_len)
  blocks = splash.BlockSizes(
    block_q=bq,
    block_kv=bkv,
    block_kv_compute=bkv,
    block_q_dkv=bq,
    block_kv_dkv=bkv,
    block_kv_dkv_compute=bkv,
    block_q_dq=bq,
    block_kv_dq=bkv,
  )
  return splash.make_splash_mha(
    splash.MultiHeadMask([head_mask] * heads),
    head_shards=1,
    q_seq_shards=1,
    block_sizes=blocks,
    # Its residuals (output, log-sum-exp) carry the attention output's remat name, so a
    # policy that keeps "context" never re-runs the kernel in the backward pass.
    residual_checkpoint_name="context",
    interpret=interpret,
  )


def _splash_local(q, k, v, q_seg, kv_seg, *, causal: bool, interpret: bool):
  """One device's share: q (B, T, N, H), k, v (B, S, K, H); segment ids (B, T), (B, S)."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash

  b, t, n, h = q.shape
  # Built per call: its block-mask arrays are constants of the trace that builds it.
  kernel = _splash_kernel(n, t, k.shape[1], causal, interpret)
  # The kernel takes one example, heads first, and does not scale the scores.
  q = jnp.swapaxes(q * jnp.asarray(h**-0.5, q.dtype), 1, 2)  # (B, N, T, H)
  k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # (B, K, S, H)
  if q_seg is None:
    out = jax.vmap(kernel)(q, k, v)
  else:
    out = jax.vmap(lambda q, k, v, qs, ks: kernel(q, k, v, segment_ids=splash.SegmentIds(qs, ks)))(
      q, k, v, q_seg, kv_seg
    )
  return jnp.swapaxes(out, 1, 2)  # (B, T, N, H)


def splash_attention(q: Array, k: Array, v: Array, masking: Masking | None, interpret: bool):
  """Splash attention, under `shard_map` when a mesh is active: batch and heads split as the
  logical-axis rules split activations, each device running the kernel on its share."""
  causal = masking is not None and masking.causal
  q_seg = kv_seg = None
  if masking is not None and masking.q_segment_ids is not None:
    q_seg, kv_seg = masking.q_segment_ids, masking.kv_segment_ids
  if q_seg is None and masking is not None and masking.kv_segment_ids is not None:
    q_seg, kv_seg = jnp.ones(q.shape[:2], jnp.int32), masking.kv_segment_ids
  fn = functools.partial(_splash_local, causal=causal, interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return fn(q, k, v, q_seg, kv_seg)
  # Sequence axes stay whole: the kernel cannot split the keys.
  spec = nn.logical_to_mesh_axes(("activation_batch", None, "activation_heads", None))
  rows = jax.sharding.PartitionSpec(spec[0], None)
  if q_seg is None:
    return jax.shard_map(
      lambda q, k, v: fn(q, k, v, None, None),
      mesh=mesh,
      in_specs=(spec, spec, spec),
      out_specs=spec,
      check_vma=False,
    )(q, k, v)
  return jax.shard_map(
    fn, mesh=mesh, in_specs=(spec, spec, spec, rows, rows), out_specs=spec, check_vma=False
  )(q, k, v, q_seg, kv_seg)


def attend(
  q: Array,  # (B, T, N, H)
  k: Array,  # (B, S, K, H)
  v: Array,  # (B, S, K, H)
  mask: Masking | Array | None,  # a Masking, or a dense (B, 1, T, S) mask
  bias: Array | None,  # (B or 1, N, T, S)
  impl: str,
  *,
  decode: bool = False,
) -> Array:
  """softmax(q k^T / sqrt(H) + bias) v with the kernel `choose` picks: (B, T, N, H).
  A mask array (a caller's, or a KV cache's) always takes the reference path."""
  masking = mask if isinstance(mask, Masking) else None
  if mask is not None and masking is None:  # a mask array (e.g. a KV cache's): reference
    kernel = impl if impl in ("einsum", "xla") else reference_impl()
  else:
    kernel = choose(impl, q.dtype, bias=bias, decode=decode, q_len=q.shape[1], kv_len=k.shape[1])
  if kernel in SPLASH:
    return splash_attention(q, k, v, masking, interpret=kernel == "splash_interpret")
  if kernel == "cudnn":
    return structural_dot_product_attention(q, k, v, masking, bias, "cudnn")
  dense = masking.dense_mask() if masking is not None else mask
  if kernel == "einsum":
    return einsum_attention(q, k, v, dense, bias)
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=dense)
