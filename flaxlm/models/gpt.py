"""GPT-style decoder-only language model: GPT-2 and LLaMA variants of one module.

GPT-2 (Radford et al. 2019): learned positions, pre-LayerNorm, GELU MLP, tied embeddings.
LLaMA (Touvron et al. 2023): RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases.
Both are a `GPTConfig`; presets are frozen and overridable field by field from the config.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from flaxlm.models.transformer import (  # noqa: F401 - re-exported for callers of gpt.*
  DTYPES,
  REMAT_POLICIES,
  Block,
  TransformerConfig,
  stack_blocks,
  vocab_logits,
)
from flaxlm.nn import attention, layers


@dataclasses.dataclass(frozen=True)
class GPTConfig(TransformerConfig):
  tie_embeddings: bool = True
  # > 1: the causal-LM loss projects to the vocabulary this many sequence chunks at a time
  # (losses.chunked_cross_entropy), so no (B, T, V) logits exist; must divide seq_len.
  num_vocab_tiles: int = 1


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
  # LLaMA-style decoder of 0.85B parameters (16 layers x 2048, GQA 32/8, SwiGLU 5632, vocab
  # 32k, untied): 16 x 45.1M per layer + 2 x 65.5M embedding and output = 852.7M.
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


class GPT(nn.Module):
  """tokens (B, T) -> logits (B, T, V); with `features`, the final hidden states (B, T, D)
  (what task heads read; no output projection is built); with `output_kernel`, those
  states and the output projection's kernel (D, V), for a loss that projects in chunks."""

  config: GPTConfig

  @nn.compact
  def __call__(
    self,
    tokens,
    positions=None,  # (B, T); default 0..T-1 (packed data passes per-segment positions)
    segment_ids=None,  # (B, T); 0 = padding, equal ids attend to each other
    deterministic: bool = True,
    decode: bool = False,
    features: bool = False,
    lengths=None,  # (B,) tokens per right-padded row: padding as lengths (for cuDNN)
    output_kernel: bool = False,
  ):
    c = self.config
    dtype = c.compute_dtype
    x, embedder, positions = c.embed_tokens(tokens, positions)  # (B, T, D)
    x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, layers.ACT_BTD)
    # In decode mode the KV cache supplies causality from the positions it stores.
    masking = attention.Masking.build(
      segment_ids,
      segment_ids,
      causal=not decode,
      q_positions=positions,
      kv_positions=positions,
      lengths=lengths,
      dense=not decode and attention.needs_dense(c.attention_impl, dtype, decode),
    )
    x = stack_blocks(
      Block,
      c,
      c.num_layers,
      c.scan_layers,
      c.remat_policy,
      deterministic=deterministic,
      decode=decode,
    )(x, masking, positions)
    x = c.norm_layer("ln_final")(x)
    if features:
      return x
    if output_kernel:
      if c.tie_embeddings:
        return x, embedder.embedding.T
      head = self.variables["params"]["lm_head"]["kernel"]  # built by the logits path at init
      return x, nn.meta.unbox(head)
    return vocab_logits(x, embedder, c.tie_embeddings, dtype)


def features(model: GPT, batch: dict, deterministic: bool) -> dict:
  """Task-head inputs: hidden states (B, T, D) and, as the sequence summary, the state at
  each row's last non-padding token (B, D) (it has seen the whole text)."""
  segments = batch["segment_ids"]
  hidden = model(batch["inputs"], segment_ids=segments, deterministic=deterministic, features=True)
  last = jnp.maximum(jnp.sum(segments > 0, axis=1) - 1, 0)
  return {"hidden": hidden, "pooled": jnp.take_along_axis(hidden, last[:, None, None], 1)[:, 0]}


def flops_per_token(c: GPTConfig, seq_len: int, target_len: int = 0, causal: bool = False) -> float:
  """Training FLOPs per token (forward + backward = 3 x forward), matmuls only.

  Forward per token: 2 x (weights used in matmuls) + attention scores and values,
  2 x 2 x seq_len x N x H (PaLM appendix B; causal masking is not discounted). `causal`
  halves the attention part, as MaxText counts it (what a kernel that skips the masked
  blocks computes).
  """
  layer = c.layer_flops_per_token(seq_len, causal=causal)
  return 3.0 * (c.num_layers * layer + 2 * c.embed_dim * c.vocab_size)
