"""What every family shares: the common model config, the residual block and the layer stack.

A GPT decoder is a stack of causal self-attention blocks; a BERT encoder the same block
with a bidirectional mask (and post-LN); a T5 decoder adds cross-attention. All of them are
`Block`, stacked by `stack_blocks` (optionally under `nn.scan` and `nn.remat`).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxlm.nn import attention, layers, projection

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

_POLICIES = jax.checkpoint_policies
_QKV = ("query_proj", "key_proj", "value_proj")

# Named rematerialization policies for `nn.remat`: what the backward pass may keep of a block
# rather than recompute. Names are the block's `checkpoint_name` tags (flaxlm.nn.layers); from
# most kept to least. MaxText's policies of the same names keep the same tensors.
REMAT_POLICIES = {
  "none": None,  # no remat: keep every activation
  "save_dots": _POLICIES.checkpoint_dots,  # every matmul output, attention scores included
  # Projections, MLP and the attention output: elementwise ops are recomputed, a fused
  # attention kernel is not (MaxText's minimal_flash).
  "minimal": _POLICIES.save_only_these_names(
    *_QKV, "context", "out_proj", "mlpwi", "mlpwi_up", "mlpwo"
  ),
  # Matmuls without batch dimensions: projections and MLP, not attention scores or a fused
  # kernel's output (MaxText's minimal).
  "save_dots_no_batch": _POLICIES.dots_with_no_batch_dims_saveable,
  "save_attention_out": _POLICIES.save_only_these_names(
    *_QKV, "context", "out_proj"
  ),  # MLP recomputed
  "save_qkv_proj": _POLICIES.save_only_these_names(*_QKV),  # attention and MLP recomputed
  "full": _POLICIES.nothing_saveable,  # recompute the whole block from its input
}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Fields every family's config has; families subclass it and add their own."""

  vocab_size: int = 0  # 0: taken from the tokenizer at run time
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 0  # 0: = num_heads (plain multi-head attention)
  head_dim: int = 0  # 0: embed_dim // num_heads
  embed_dim: int = 128
  mlp_dim: int = 512
  max_len: int = 256
  dropout_rate: float = 0.0
  position: str = "learned"  # learned | sinusoidal | rope (| relative: encoder-decoder)
  rope_theta: float = 10_000.0
  norm: str = "layernorm"  # layernorm | rmsnorm
  norm_position: str = "pre"  # pre: x + f(norm(x)) | post: norm(x + f(x)) (BERT, Vaswani)
  norm_eps: float = 1e-5
  activation: str = "gelu"  # gelu | gelu_exact | relu | silu
  gated_mlp: bool = False  # True with silu = SwiGLU, with gelu = GeGLU
  use_bias: bool = True
  dtype: str = "float32"  # compute dtype; parameters stay float32
  scan_layers: bool = False
  remat_policy: str = "none"
  # auto: splash on TPU, cudnn on GPU (bf16/f16), einsum on CPU | xla | cudnn | einsum | splash
  # | splash_interpret (tests); see flaxlm.nn.attention
  attention_impl: str = "auto"

  POSITIONS = ("learned", "sinusoidal", "rope")
  # Dropout on the MLP's hidden activation (B, T, F): T5 and PyTorch's nn.Transformer have it;
  # BERT, GPT-2 and LLaMA (and their Hugging Face ports) do not. A family constant, not a
  # config key, so checkpoints are unchanged.
  MLP_HIDDEN_DROPOUT = False

  def __post_init__(self):
    if self.embed_dim % self.num_heads and not self.head_dim:
      raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
    if self.kv_heads and self.num_heads % self.kv_heads:
      raise ValueError(
        f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.kv_heads}"
      )
    for field, allowed in [
      ("position", self.POSITIONS),
      ("norm", ("layernorm", "rmsnorm")),
      ("norm_position", ("pre", "post")),
      ("activation", tuple(layers.ACTIVATIONS)),
      ("dtype", tuple(DTYPES)),
      ("remat_policy", tuple(REMAT_POLICIES)),
      ("attention_impl", attention.IMPLS),
    ]:
      if getattr(self, field) not in allowed:
        raise ValueError(f"model.{field}={getattr(self, field)!r}; choose one of {allowed}")

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.embed_dim // self.num_heads

  @property
  def residual_init_std(self) -> float:
    """GPT-2's init for projections into the residual stream: 0.02 / sqrt(2 * layers)."""
    return 0.02 / (2 * self.num_layers) ** 0.5

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

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
      dtype=self.compute_dtype,
      out_init_std=self.residual_init_std,
    )

  def norm_layer(self, name: str) -> nn.Module:
    return layers.make_norm(self.norm, self.use_bias, self.norm_eps, self.compute_dtype, name)

  def embed_tokens(self, tokens, positions=None):
    """(x (B, T, D), embedder, positions): token plus absolute position embeddings, with
    positions defaulting to 0..T-1. Must be called from a compact method."""
    positions = default_positions(tokens, positions)
    embedder = layers.Embedder(
      self.vocab_size, self.embed_dim, dtype=self.compute_dtype, name="embed"
    )
    return self.embed_positions(embedder(tokens), positions), embedder, positions

  def embed_positions(self, x, positions, name: str = "pos_embed"):
    """Adds learned or sinusoidal absolute positions (RoPE and relative act in attention).
    Must be called from a compact method."""
    if self.position == "learned":
      return x + layers.LearnedPositions(self.max_len, self.embed_dim, name=name)(positions).astype(
        x.dtype
      )
    if self.position == "sinusoidal":
      return x + layers.sinusoidal_table(self.max_len, self.embed_dim)[positions].astype(x.dtype)
    return x

  def layer_flops_per_token(self, seq_len: int, cross_len: int = 0, causal: bool = False) -> float:
    """Forward matmul FLOPs of one block per token: projections, MLP, attention scores and
    values (2 x 2 x S x N x H; PaLM appendix B, causal masking not discounted). `causal`
    halves the self-attention scores and values, as MaxText counts them."""
    d, h = self.embed_dim, self.dim_per_head
    attn_proj = d * h * (self.num_heads * 2 + self.kv_heads * 2)  # q, out, k, v
    mlp = d * self.mlp_dim * (3 if self.gated_mlp else 2)
    flops = 2 * (attn_proj + mlp) + 4 * seq_len * self.num_heads * h / (2 if causal else 1)
    if cross_len:  # cross-attention: q, out per target token; k, v counted on the source side
      flops += 2 * (2 * d * h * self.num_heads) + 4 * cross_len * self.num_heads * h
    return flops


def vocab_logits(x, embedder, tied: bool, dtype, tied_scale: float = 1.0):
  """(B, T, D) -> float32 logits (B, T, V): the tied token embedding (applied to
  x * tied_scale) or an untied 'lm_head'. Must be called from a compact method."""
  if tied:
    logits = embedder.attend(x * tied_scale if tied_scale != 1.0 else x)
  else:
    logits = projection.dense(
      embedder.vocab_size, ("embed", "vocab"), "lm_head", use_bias=False, dtype=dtype
    )(x)
  logits = nn.with_logical_constraint(
    logits, ("activation_batch", "activation_length", "activation_vocab")
  )
  return logits.astype(jnp.float32)


def default_positions(tokens, positions=None):
  """`positions`, or 0..T-1 for every row of tokens (B, T)."""
  if positions is None:
    return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  return positions


class Block(nn.Module):
  """Self-attention (+ cross-attention if `cross`) + MLP, each a residual branch with dropout.

  Pre-norm: x + f(norm(x)); post-norm (BERT, Vaswani et al.): norm(x + f(x)).
  Returns (x, None) so that it can run under nn.scan.
  """

  config: TransformerConfig
  deterministic: bool = True
  decode: bool = False
  cross: bool = False

  @nn.compact
  def __call__(self, x, mask, positions, bias=None, encoded=None, cross_mask=None):
    c = self.config
    drop = nn.Dropout(c.dropout_rate)

    def residual(x, name, branch):
      if c.norm_position == "pre":
        return x + drop(branch(c.norm_layer(f"ln_{name}")(x)), deterministic=self.deterministic)
      return c.norm_layer(f"ln_{name}")(x + drop(branch(x), deterministic=self.deterministic))

    attn = layers.Attention(c.attention(), decode=self.decode, name="attn")
    x = residual(x, "attn", lambda h: attn(h, mask, positions, bias=bias))
    if self.cross:
      cross_attn = layers.Attention(c.attention(), decode=self.decode, name="cross_attn")
      x = residual(x, "cross", lambda h: cross_attn(h, cross_mask, kv=encoded))
    mlp = layers.MLP(
      c.embed_dim,
      c.mlp_dim,
      activation=c.activation,
      gated=c.gated_mlp,
      use_bias=c.use_bias,
      dropout_rate=c.dropout_rate if c.MLP_HIDDEN_DROPOUT else 0.0,
      dtype=c.compute_dtype,
      out_init_std=c.residual_init_std,
      name="mlp",
    )
    x = residual(x, "mlp", lambda h: mlp(h, self.deterministic))
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
      variable_axes={"params": 0, "cache": 0, layers.MAPS: 0},
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
