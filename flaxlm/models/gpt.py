"""GPT-style decoder-only language model: GPT-2 and LLaMA variants of one module.

GPT-2 (Radford et al. 2019): learned positions, pre-LayerNorm, GELU MLP, tied embeddings.
LLaMA (Touvron et al. 2023): RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases.
Both are a `GPTConfig`; presets are frozen and overridable field by field from the config.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxlm import layers

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# Named rematerialization policies for `nn.remat` (what the backward pass may keep).
REMAT_POLICIES = {
  "none": None,  # no remat: keep every activation
  "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block
  "save_dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs
  "save_dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  vocab_size: int = 0  # 0: taken from the tokenizer at run time
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 0  # 0: = num_heads (plain multi-head attention)
  head_dim: int = 0  # 0: embed_dim // num_heads
  embed_dim: int = 128
  mlp_dim: int = 512
  max_len: int = 256
  dropout_rate: float = 0.0
  position: str = "learned"  # learned | sinusoidal | rope
  rope_theta: float = 10_000.0
  norm: str = "layernorm"  # layernorm | rmsnorm
  norm_eps: float = 1e-5
  activation: str = "gelu"  # gelu | gelu_exact | relu | silu
  gated_mlp: bool = False  # True with silu = SwiGLU
  use_bias: bool = True
  tie_embeddings: bool = True
  dtype: str = "float32"  # compute dtype; parameters stay float32
  scan_layers: bool = False
  remat_policy: str = "none"
  attention_impl: str = "xla"  # xla | cudnn

  def __post_init__(self):
    if self.embed_dim % self.num_heads and not self.head_dim:
      raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
    if self.kv_heads and self.num_heads % self.kv_heads:
      raise ValueError(
        f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.kv_heads}"
      )
    for field, allowed in [
      ("position", ("learned", "sinusoidal", "rope")),
      ("norm", ("layernorm", "rmsnorm")),
      ("activation", tuple(layers.ACTIVATIONS)),
      ("dtype", tuple(DTYPES)),
      ("remat_policy", tuple(REMAT_POLICIES)),
      ("attention_impl", ("xla", "cudnn")),
    ]:
      if getattr(self, field) not in allowed:
        raise ValueError(f"model.{field}={getattr(self, field)!r}; choose one of {allowed}")

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.embed_dim // self.num_heads

  def attention(self) -> layers.AttentionConfig:
    return layers.AttentionConfig(
      embed_dim=self.embed_dim,
      num_heads=self.num_heads,
      num_kv_heads=self.kv_heads,
      head_dim=self.dim_per_head,
      use_bias=self.use_bias,
      position=self.position,
      rope_theta=self.rope_theta,
      attention_impl=self.attention_impl,
      dtype=DTYPES[self.dtype],
      out_init_std=0.02 / (2 * self.num_layers) ** 0.5,
    )


PRESETS = {
  # CPU demo: trains in minutes on two cores.
  "tiny": GPTConfig(num_layers=4, num_heads=4, embed_dim=128, mlp_dim=512, max_len=256),
  # GPT-2 sizes (Radford et al. 2019), vocab 50257 padded to 50304.
  "gpt2_small": GPTConfig(
    vocab_size=50304, num_layers=12, num_heads=12, embed_dim=768, mlp_dim=3072, max_len=1024
  ),
  "gpt2_medium": GPTConfig(
    vocab_size=50304, num_layers=24, num_heads=16, embed_dim=1024, mlp_dim=4096, max_len=1024
  ),
  # ~1.2B decoder, LLaMA style (16 layers x 2048, GQA 32/8, SwiGLU 5632, vocab 32k).
  "llama_1b": GPTConfig(
    vocab_size=32000,
    num_layers=16,
    num_heads=32,
    num_kv_heads=8,
    embed_dim=2048,
    mlp_dim=5632,
    max_len=2048,
    position="rope",
    norm="rmsnorm",
    activation="silu",
    gated_mlp=True,
    use_bias=False,
    tie_embeddings=False,
    scan_layers=True,
    remat_policy="save_dots_no_batch",
  ),
}


class Block(nn.Module):
  """Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x)). Returns (x, None) for scan."""

  config: GPTConfig
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x, mask, positions):
    c = self.config
    dtype = DTYPES[c.dtype]
    norm = lambda name: layers.make_norm(c.norm, c.use_bias, c.norm_eps, dtype, name)
    drop = nn.Dropout(c.dropout_rate)
    h = layers.Attention(c.attention(), decode=self.decode, name="attn")(
      norm("ln_attn")(x), mask, positions
    )
    x = x + drop(h, deterministic=self.deterministic)
    h = layers.MLP(
      c.embed_dim,
      c.mlp_dim,
      activation=c.activation,
      gated=c.gated_mlp,
      use_bias=c.use_bias,
      dropout_rate=c.dropout_rate,
      dtype=dtype,
      out_init_std=0.02 / (2 * c.num_layers) ** 0.5,
      name="mlp",
    )(norm("ln_mlp")(x), self.deterministic)
    x = x + drop(h, deterministic=self.deterministic)
    return nn.with_logical_constraint(x, layers.ACT_BTD), None


def stack_blocks(block_cls, config, num_layers: int, scan: bool, remat_policy: str, **kwargs):
  """Returns fn(x, *args) -> x applying `num_layers` blocks, under nn.scan and nn.remat if asked.

  Shared by every family so that scan/remat behave the same everywhere. Must be called
  inside a compact method; blocks are named 'layers' (scanned) or 'layers_{i}'.
  """
  cls = block_cls
  if remat_policy != "none":
    cls = nn.remat(cls, policy=REMAT_POLICIES[remat_policy], prevent_cse=not scan)
  if scan:
    scanned = nn.scan(
      cls,
      variable_axes={"params": 0, "cache": 0},
      split_rngs={"params": True, "dropout": True},
      in_axes=nn.broadcast,
      length=num_layers,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )(config, name="layers", **kwargs)
    return lambda x, *args: scanned(x, *args)[0]
  blocks = [cls(config, name=f"layers_{i}", **kwargs) for i in range(num_layers)]

  def run(x, *args):
    for block in blocks:
      x, _ = block(x, *args)
    return x

  return run


class GPT(nn.Module):
  """tokens (B, T) -> logits (B, T, V)."""

  config: GPTConfig

  @nn.compact
  def __call__(
    self,
    tokens,
    positions=None,  # (B, T); default 0..T-1 (packed data passes per-segment positions)
    segment_ids=None,  # (B, T); 0 = padding, equal ids attend to each other
    deterministic: bool = True,
    decode: bool = False,
  ):
    c = self.config
    dtype = DTYPES[c.dtype]
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    embedder = layers.Embedder(c.vocab_size, c.embed_dim, dtype=dtype, name="embed")
    x = embedder(tokens)  # (B, T, D)
    if c.position == "learned":
      x = x + layers.LearnedPositions(c.max_len, c.embed_dim, name="pos_embed")(positions).astype(
        dtype
      )
    elif c.position == "sinusoidal":
      x = x + layers.sinusoidal_table(c.max_len, c.embed_dim)[positions].astype(dtype)
    x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, layers.ACT_BTD)
    # In decode mode the cache supplies causality; otherwise compare positions.
    mask = layers.attention_mask(
      segment_ids, segment_ids, causal=not decode, q_positions=positions, kv_positions=positions
    )
    x = stack_blocks(
      Block,
      c,
      c.num_layers,
      c.scan_layers,
      c.remat_policy,
      deterministic=deterministic,
      decode=decode,
    )(x, mask, positions)
    x = layers.make_norm(c.norm, c.use_bias, c.norm_eps, dtype, "ln_final")(x)
    if c.tie_embeddings:
      logits = embedder.attend(x)
    else:
      logits = nn.DenseGeneral(
        c.vocab_size,
        use_bias=False,
        dtype=dtype,
        kernel_init=layers.logical_init(nn.initializers.normal(0.02), ("embed", "vocab")),
        name="lm_head",
      )(x)
    logits = nn.with_logical_constraint(
      logits, ("activation_batch", "activation_length", "activation_vocab")
    )
    return logits.astype(jnp.float32)


def flops_per_token(c: GPTConfig, seq_len: int) -> float:
  """Training FLOPs per token (forward + backward = 3 x forward), matmuls only.

  Forward per token: 2 x (weights used in matmuls) + attention scores and values,
  2 x 2 x seq_len x N x H (PaLM appendix B; causal masking is not discounted).
  """
  d, h = c.embed_dim, c.dim_per_head
  attn_proj = d * h * (c.num_heads * 2 + c.kv_heads * 2)  # q, out, k, v
  mlp = d * c.mlp_dim * (3 if c.gated_mlp else 2)
  per_layer = 2 * (attn_proj + mlp) + 4 * seq_len * c.num_heads * h
  head = 2 * d * c.vocab_size
  return 3.0 * (c.num_layers * per_layer + head)
