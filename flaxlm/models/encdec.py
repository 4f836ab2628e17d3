"""Encoder–decoder transformers: T5 (v1.0 / v1.1) and the original Transformer.

One module covers both; the config picks the variant:
  T5 (Raffel et al. 2020): relative position bias (bucketed, one table per stack shared by
    its layers), pre-RMSNorm without bias, ReLU (v1.0) or gated-GELU (v1.1) MLP, tied
    (v1.0, logits scaled by D^-0.5) or untied (v1.1) output embedding.
  Transformer (Vaswani et al. 2017): sinusoidal positions, post-LN, one vocabulary shared by
    source and target, embeddings scaled by sqrt(D) and tied with the output projection.

The decoder is the shared `Block` with cross-attention. Batches may pack several examples
per row: segment ids (0 = padding) keep them apart in every attention and positions restart
per example.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax.numpy as jnp

from flaxlm.models.transformer import (
  Block,
  TransformerConfig,
  default_positions,
  stack_blocks,
  vocab_logits,
)
from flaxlm.nn import attention, layers


@dataclasses.dataclass(frozen=True)
class EncDecConfig(TransformerConfig):
  num_decoder_layers: int = 0  # 0: = num_layers
  tie_embeddings: bool = True  # output projection = the shared token embedding
  scale_embeddings: bool = False  # x * sqrt(D) before positions (Vaswani)
  scale_tied_logits: bool = False  # decoder output * D^-0.5 before tied logits (T5 v1.0)
  embed_init_std: float = 0.02
  relative_buckets: int = 32  # position == 'relative' (T5)
  relative_max_distance: int = 128

  POSITIONS = ("learned", "sinusoidal", "rope", "relative")
  MLP_HIDDEN_DROPOUT = True  # T5's DenseReluDense, nn.Transformer's feed-forward

  @property
  def decoder_layers(self) -> int:
    return self.num_decoder_layers or self.num_layers


def _t5(**kw) -> EncDecConfig:
  base = dict(
    position="relative",
    norm="rmsnorm",
    norm_eps=1e-6,
    use_bias=False,
    activation="relu",
    scale_tied_logits=True,
    embed_init_std=1.0,
    dropout_rate=0.1,
    max_len=512,
  )
  return EncDecConfig(**{**base, **kw})


def _vaswani(**kw) -> EncDecConfig:
  d = kw["embed_dim"]
  base = dict(
    position="sinusoidal",
    norm_position="post",
    activation="relu",
    scale_embeddings=True,
    embed_init_std=d**-0.5,
    dropout_rate=0.1,
    max_len=256,
  )
  return EncDecConfig(**{**base, **kw})


PRESETS = {
  # T5 v1.0 sizes (Raffel et al. 2020); t5_tiny is a CPU-sized model of the same design.
  "t5_tiny": _t5(num_layers=2, num_heads=4, embed_dim=128, mlp_dim=512),
  "t5_small": _t5(num_layers=6, num_heads=8, embed_dim=512, mlp_dim=2048),
  "t5_base": _t5(num_layers=12, num_heads=12, embed_dim=768, mlp_dim=3072),
  # T5 v1.1: gated-GELU, untied output, no dropout in pretraining.
  "t5_v1_1_small": _t5(
    num_layers=8,
    num_heads=6,
    head_dim=64,
    embed_dim=512,
    mlp_dim=1024,
    activation="gelu",
    gated_mlp=True,
    tie_embeddings=False,
    scale_tied_logits=False,
    dropout_rate=0.0,
  ),
  # Vaswani et al. 2017 base; transformer_small is the size REFERENCE.md's PyTorch run uses.
  "transformer_small": _vaswani(num_layers=3, num_heads=4, embed_dim=256, mlp_dim=1024),
  "transformer_base": _vaswani(num_layers=6, num_heads=8, embed_dim=512, mlp_dim=2048),
}


def relative_bucket(relative, bidirectional: bool, num_buckets: int, max_distance: int):
  """T5's bucket of each key-minus-query offset: exact for small offsets, log-spaced up to
  max_distance, the last bucket beyond; bidirectional halves the buckets between signs."""
  n = -relative
  bucket = 0
  if bidirectional:
    num_buckets //= 2
    bucket = (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  exact = num_buckets // 2
  log_ratio = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / exact) / math.log(
    max_distance / exact
  )
  large = jnp.minimum(
    exact + (log_ratio * (num_buckets - exact)).astype(jnp.int32), num_buckets - 1
  )
  return bucket + jnp.where(n < exact, n, large)


class RelativePositionBias(nn.Module):
  """(B, T) query and (B or 1, S) key positions -> additive attention bias (B, N, T, S)."""

  config: EncDecConfig
  bidirectional: bool

  @nn.compact
  def __call__(self, q_positions, k_positions):
    c = self.config
    table = self.param(
      "embedding",
      layers.logical_init(nn.initializers.normal(0.02), ("relpos_buckets", "heads")),
      (c.relative_buckets, c.num_heads),
    )
    rel = k_positions[:, None, :] - q_positions[:, :, None]  # (B, T, S)
    buckets = relative_bucket(rel, self.bidirectional, c.relative_buckets, c.relative_max_distance)
    bias = jnp.take(table, buckets, axis=0)  # (B, T, S, N)
    return jnp.transpose(bias, (0, 3, 1, 2)).astype(c.compute_dtype)


def _embed(c: EncDecConfig, embedder, tokens, positions, deterministic, probe: str):
  x = embedder(tokens, probe)
  if c.scale_embeddings:
    x = x * jnp.sqrt(jnp.asarray(c.embed_dim, x.dtype))
  x = c.embed_positions(x, positions)
  x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
  return nn.with_logical_constraint(x, layers.ACT_BTD)


def _finish(c: EncDecConfig, x, deterministic):
  if c.norm_position == "pre":
    x = c.norm_layer("ln_final")(x)
    x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
  return x


class Encoder(nn.Module):
  config: EncDecConfig
  embedder: nn.Module

  @nn.compact
  def __call__(self, tokens, segment_ids, positions, deterministic: bool):
    c = self.config
    x = _embed(c, self.embedder, tokens, positions, deterministic, "source")
    relative = c.position == "relative"
    dense = attention.needs_dense(c.attention_impl, c.compute_dtype, bias=relative)
    mask = attention.Masking.build(segment_ids, segment_ids, causal=False, dense=dense)
    bias = None
    if c.position == "relative":
      bias = RelativePositionBias(c, bidirectional=True, name="relative_bias")(positions, positions)
    x = stack_blocks(
      Block, c, c.num_layers, c.scan_layers, c.remat_policy, deterministic=deterministic
    )(x, mask, positions, bias)
    return _finish(c, x, deterministic)


class Decoder(nn.Module):
  config: EncDecConfig
  embedder: nn.Module
  decode: bool = False

  @nn.compact
  def __call__(
    self, tokens, encoded, encoder_segments, segment_ids, positions, deterministic, decode_len
  ):
    c = self.config
    x = _embed(c, self.embedder, tokens, positions, deterministic, "target")
    # Decoding: the cache supplies causality and the keys sit at cache slots 0..decode_len-1.
    mask = None
    k_positions = positions
    relative = c.position == "relative"
    dense = attention.needs_dense(c.attention_impl, c.compute_dtype, self.decode, relative)
    if self.decode:
      k_positions = jnp.arange(decode_len)[None]
    else:
      mask = attention.Masking.build(
        segment_ids,
        segment_ids,
        causal=True,
        q_positions=positions,
        kv_positions=positions,
        dense=dense,
      )
    q_segments = jnp.ones_like(tokens) if segment_ids is None else segment_ids
    cross_mask = None
    if encoder_segments is not None:
      cross_mask = attention.Masking.build(
        q_segments,
        encoder_segments,
        causal=False,
        dense=attention.needs_dense(c.attention_impl, c.compute_dtype, self.decode),
      )
    bias = None
    if c.position == "relative":
      bias = RelativePositionBias(c, bidirectional=False, name="relative_bias")(
        positions, k_positions
      )
    x = stack_blocks(
      Block,
      c,
      c.decoder_layers,
      c.scan_layers,
      c.remat_policy,
      deterministic=deterministic,
      decode=self.decode,
      cross=True,
    )(x, mask, positions, bias, encoded, cross_mask)
    x = _finish(c, x, deterministic)
    scale = c.embed_dim**-0.5 if c.scale_tied_logits else 1.0
    return vocab_logits(x, self.embedder, c.tie_embeddings, c.compute_dtype, scale)


class EncoderDecoder(nn.Module):
  """inputs (B, S), decoder_inputs (B, T) -> logits (B, T, V).

  `encode` and `decode` are separate methods (`model.apply(..., method=...)`) so decoding
  runs the encoder once. Segment ids: 0 = padding, equal ids = one packed example;
  `decoder_segments` must use the same ids as the example's `input_segments`.
  """

  config: EncDecConfig
  decode_mode: bool = False  # build the decoder with a KV cache (see flaxlm.decode.seq2seq)

  def setup(self):
    c = self.config
    self.embedder = layers.Embedder(
      c.vocab_size, c.embed_dim, dtype=c.compute_dtype, init_std=c.embed_init_std
    )
    self.encoder = Encoder(c, self.embedder)
    self.decoder = Decoder(c, self.embedder, decode=self.decode_mode)

  def __call__(
    self,
    inputs,
    decoder_inputs=None,  # None only at init: the decoder is traced on `inputs`
    input_segments=None,
    decoder_segments=None,
    input_positions=None,
    decoder_positions=None,
    deterministic: bool = True,
  ):
    encoded = self.encode(inputs, input_segments, input_positions, deterministic)
    decoder_inputs = inputs if decoder_inputs is None else decoder_inputs
    return self.decode(
      encoded, decoder_inputs, input_segments, decoder_segments, decoder_positions, deterministic
    )

  def encode(self, inputs, input_segments=None, input_positions=None, deterministic=True):
    """(B, S) -> (B, S, D)."""
    return self.encoder(
      inputs, input_segments, default_positions(inputs, input_positions), deterministic
    )

  def decode(
    self,
    encoded,
    decoder_inputs,
    input_segments=None,
    decoder_segments=None,
    decoder_positions=None,
    deterministic=True,
    decode_len: int = 0,  # cache length when decode_mode
  ):
    """encoded (B, S, D), decoder_inputs (B, T) -> logits (B, T, V)."""
    positions = default_positions(decoder_inputs, decoder_positions)
    return self.decoder(
      decoder_inputs,
      encoded,
      input_segments,
      decoder_segments,
      positions,
      deterministic,
      decode_len,
    )


def features(model: EncoderDecoder, batch: dict, deterministic: bool) -> dict:
  """Task-head inputs from the encoder: hidden states (B, S, D) and their mean over the
  non-padding tokens (B, D)."""
  segments = batch["segment_ids"]
  hidden = model.encode(batch["inputs"], segments, deterministic=deterministic)
  weights = (segments > 0).astype(hidden.dtype)[..., None]
  pooled = jnp.sum(hidden * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
  return {"hidden": hidden, "pooled": pooled}


def flops_per_token(c: EncDecConfig, seq_len: int, target_len: int = 0) -> float:
  """Training FLOPs per (source + target) token: 3 x forward, matmuls only."""
  s, t = seq_len, target_len or seq_len
  kv_proj = 2 * 2 * c.embed_dim * c.dim_per_head * c.kv_heads  # cross k, v per source token
  forward = (
    s * c.num_layers * c.layer_flops_per_token(s)
    + t * c.decoder_layers * c.layer_flops_per_token(t, cross_len=s)
    + s * c.decoder_layers * kv_proj
    + t * 2 * c.embed_dim * c.vocab_size
  )
  return 3.0 * forward / (s + t)
