"""BERT / RoBERTa-style bidirectional encoder with masked-LM, NSP and pooler heads.

BERT (Devlin et al. 2019): learned positions + token-type embeddings, embedding LayerNorm,
post-LN blocks, exact GELU, a tanh pooler over [CLS]; the MLM head (dense, GELU, LayerNorm,
tied decoder + bias) runs only at the positions asked for, so a batch with 15% masking
computes 1/6.7 of the vocabulary projection. RoBERTa (Liu et al. 2019): the same module
without token types or NSP, trained with dynamic masking (see objectives.masked_lm).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax.numpy as jnp

from flaxlm.models.transformer import Block, TransformerConfig, stack_blocks
from flaxlm.nn import attention, layers, projection


@dataclasses.dataclass(frozen=True)
class BertConfig(TransformerConfig):
  max_len: int = 512
  dropout_rate: float = 0.1
  norm_position: str = "post"
  norm_eps: float = 1e-12
  activation: str = "gelu_exact"
  type_vocab_size: int = 2  # segment A / B; 1 for RoBERTa
  nsp_head: bool = True  # next-sentence classifier on the pooled [CLS] (BERT only)


PRESETS = {
  # Turc et al. 2019 compact BERTs; BERT-base (Devlin et al. 2019).
  "bert_tiny": BertConfig(num_layers=2, num_heads=2, embed_dim=128, mlp_dim=512),
  "bert_mini": BertConfig(num_layers=4, num_heads=4, embed_dim=256, mlp_dim=1024),
  "bert_small": BertConfig(num_layers=4, num_heads=8, embed_dim=512, mlp_dim=2048),
  "bert_base": BertConfig(num_layers=12, num_heads=12, embed_dim=768, mlp_dim=3072),
  # RoBERTa (Liu et al. 2019): one token type, no NSP.
  "roberta_base": BertConfig(
    num_layers=12, num_heads=12, embed_dim=768, mlp_dim=3072, type_vocab_size=1, nsp_head=False
  ),
  "roberta_large": BertConfig(
    num_layers=24, num_heads=16, embed_dim=1024, mlp_dim=4096, type_vocab_size=1, nsp_head=False
  ),
}


class Bert(nn.Module):
  """tokens (B, T) -> {'hidden' (B, T, D), 'pooled' (B, D), 'mlm_logits', 'nsp_logits' (B, 2)}.

  mlm_logits are (B, P, V) at `mlm_positions` (B, P), or (B, T, V) when it is None. With
  `heads=False` only the encoder and pooler run (and exist): what task heads read.
  """

  config: BertConfig

  @nn.compact
  def __call__(
    self,
    tokens,
    type_ids=None,  # (B, T) 0/1 segment A/B
    segment_ids=None,  # (B, T) 0 = padding; equal ids attend to each other (packing)
    mlm_positions=None,  # (B, P) int
    positions=None,
    deterministic: bool = True,
    heads: bool = True,
    pool_index=None,  # (N,) packed rows: each example's first token in the flat B * T tokens
  ):
    c = self.config
    dtype = c.compute_dtype
    x, embedder, positions = c.embed_tokens(tokens, positions)
    if c.type_vocab_size > 1:
      types = nn.Embed(
        c.type_vocab_size,
        c.embed_dim,
        embedding_init=layers.logical_init(nn.initializers.normal(0.02), ("num_types", "embed")),
        name="type_embed",
      )
      x = x + types(jnp.zeros_like(tokens) if type_ids is None else type_ids).astype(dtype)
    if c.norm_position == "post":
      x = c.norm_layer("ln_embed")(x)
    x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, layers.ACT_BTD)
    mask = attention.Masking.build(
      segment_ids, segment_ids, causal=False, dense=attention.needs_dense(c.attention_impl, dtype)
    )
    x = stack_blocks(
      Block, c, c.num_layers, c.scan_layers, c.remat_policy, deterministic=deterministic
    )(x, mask, positions)
    if c.norm_position == "pre":
      x = c.norm_layer("ln_final")(x)

    dense = lambda features, axes, name: projection.dense(features, axes, name, dtype=dtype)
    first = x[:, 0] if pool_index is None else x.reshape(-1, x.shape[-1])[pool_index]
    pooled = jnp.tanh(dense(c.embed_dim, ("embed", "mlp"), "pooler")(first))
    out = {"hidden": x, "pooled": pooled}
    if not heads:
      return out
    if c.nsp_head:
      out["nsp_logits"] = dense(2, ("mlp", None), "nsp")(pooled).astype(jnp.float32)

    h = x if mlm_positions is None else jnp.take_along_axis(x, mlm_positions[..., None], axis=1)
    # The transform's output keeps the 'embed' name (not 'mlp'): with its features split over
    # `tensor` and the LayerNorm below reducing over them, XLA's SPMD partitioner (jax 0.10.2,
    # CPU) produced wrong gradients on a 2x2x2 (data, fsdp, tensor) mesh; test_bert checks it.
    h = layers.ACTIVATIONS[c.activation](dense(c.embed_dim, (None, "embed"), "mlm_dense")(h))
    h = layers.make_norm("layernorm", True, c.norm_eps, dtype, "mlm_ln")(h)
    bias = self.param(
      "mlm_bias", layers.logical_init(nn.initializers.zeros, ("vocab",)), (c.vocab_size,)
    )
    out["mlm_logits"] = (embedder.attend(h) + bias.astype(dtype)).astype(jnp.float32)
    return out


def features(model: Bert, batch: dict, deterministic: bool) -> dict:
  """Task-head inputs: hidden states (B, T, D) and the pooled [CLS] state (B, D); of packed
  rows (`pipeline.pack_collate`: `positions`, `pool_index`), one pooled state per example."""
  return model(
    batch["inputs"],
    type_ids=batch.get("type_ids"),
    segment_ids=batch["segment_ids"],
    positions=batch.get("positions"),
    deterministic=deterministic,
    heads=False,
    pool_index=batch.get("pool_index"),
  )


def default_max_predictions(seq_len: int, mask_rate: float = 0.15) -> int:
  """Masked positions per sequence the MLM head computes (BERT: 20 for 128)."""
  return max(1, math.ceil(mask_rate * seq_len))


def flops_per_token(c: BertConfig, seq_len: int, target_len: int = 0) -> float:
  """Training FLOPs per token: the encoder, plus the MLM head at the masked share of tokens."""
  head = 2 * (c.embed_dim * c.embed_dim + c.embed_dim * c.vocab_size)
  share = default_max_predictions(seq_len) / seq_len
  return 3.0 * (c.num_layers * c.layer_flops_per_token(seq_len) + share * head)
