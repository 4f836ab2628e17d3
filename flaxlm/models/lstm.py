"""A bidirectional LSTM over word embeddings: the no-pretraining baseline for sequence and
token classification (Graves & Schmidhuber 2005; for tagging, Lample et al. 2016), so users
see what pretraining buys them.

Words are embedded (optionally concatenated with a character CNN over each word's spelling,
Ma & Hovy 2016, which lets the model read case and affixes of rare and unknown words), run
through `num_layers` BiLSTMs whose backward direction respects each row's length, and
summarized by a mean (or max) over the non-padding positions.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from flaxlm.errors import ConfigError
from flaxlm.models.transformer import DTYPES
from flaxlm.nn import layers


@dataclasses.dataclass(frozen=True)
class LSTMConfig:
  vocab_size: int = 0  # 0: taken from the tokenizer at run time
  embed_dim: int = 128
  hidden_dim: int = 128  # per direction
  num_layers: int = 1
  dropout_rate: float = 0.3
  pooling: str = "mean"  # mean | max: the sequence summary for classification
  char_vocab_size: int = 0  # 0: taken from the word tokenizer when char_dim > 0
  char_dim: int = 0  # > 0: a character CNN of char_filters features joins each word
  char_filters: int = 64
  char_width: int = 3
  max_chars: int = 16  # characters read per word
  max_len: int = 0  # unused (no positions); kept so configs read like the transformers'
  dtype: str = "float32"

  def __post_init__(self):
    if self.pooling not in ("mean", "max"):
      raise ConfigError(f"model.pooling={self.pooling!r}; choose 'mean' or 'max'")
    if self.dtype not in DTYPES:
      raise ConfigError(f"model.dtype={self.dtype!r}; choose one of {tuple(DTYPES)}")


PRESETS = {
  # The PyTorch baselines of ../shared/REFERENCE.md: 128-d embeddings, 128 x 2 hidden.
  "bilstm": LSTMConfig(),
  "bilstm_char": LSTMConfig(embed_dim=100, char_dim=32, char_filters=64),
}


class CharCNN(nn.Module):
  """chars (B, T, C) -> (B, T, F): embed, convolve over the word's characters, max-pool."""

  config: LSTMConfig

  @nn.compact
  def __call__(self, chars):
    c = self.config
    b, t, n = chars.shape
    x = nn.Embed(
      c.char_vocab_size,
      c.char_dim,
      embedding_init=layers.logical_init(nn.initializers.normal(0.1), ("char_vocab", None)),
      name="char_embed",
    )(chars.reshape(b * t, n))
    x = nn.Conv(c.char_filters, (c.char_width,), padding="SAME", name="char_conv")(x)
    x = jnp.where((chars.reshape(b * t, n) > 0)[..., None], x, -1e9)  # ignore padding chars
    x = jnp.max(x, axis=1)
    x = jnp.where(x < -1e8, 0.0, x)  # a padding word (no characters)
    return nn.relu(x).reshape(b, t, c.char_filters)


class BiLSTM(nn.Module):
  """tokens (B, T), segment_ids (B, T) (0 = padding) -> {'hidden' (B, T, 2H), 'pooled' (B, 2H)}."""

  config: LSTMConfig

  @nn.compact
  def __call__(self, tokens, segment_ids=None, chars=None, deterministic: bool = True):
    c = self.config
    mask = jnp.ones_like(tokens, bool) if segment_ids is None else segment_ids > 0
    lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
    embed = nn.Embed(
      c.vocab_size,
      c.embed_dim,
      embedding_init=layers.logical_init(nn.initializers.normal(0.1), ("vocab", "embed")),
      name="embed",
    )
    x = layers.probe_embeddings(self, embed(tokens))  # attributions read the word embeddings
    if c.char_dim:
      if chars is None:
        raise ConfigError("model.char_dim > 0 needs character ids: use tokenizer.kind='word'")
      x = jnp.concatenate([x, CharCNN(c, name="chars")(chars)], axis=-1)
    x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
    for i in range(c.num_layers):
      x = nn.Bidirectional(
        nn.RNN(nn.OptimizedLSTMCell(c.hidden_dim, dtype=DTYPES[c.dtype]), name=f"forward_{i}"),
        nn.RNN(
          nn.OptimizedLSTMCell(c.hidden_dim, dtype=DTYPES[c.dtype]),
          reverse=True,
          keep_order=True,
          name=f"backward_{i}",
        ),
        name=f"bilstm_{i}",
      )(x, seq_lengths=lengths)
      x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
    x = jnp.where(mask[..., None], x, 0.0)
    if c.pooling == "max":
      pooled = jnp.max(jnp.where(mask[..., None], x, -1e9), axis=1)
    else:
      pooled = jnp.sum(x, axis=1) / jnp.maximum(lengths, 1)[:, None].astype(x.dtype)
    return {"hidden": x, "pooled": pooled}


def features(model: BiLSTM, batch: dict, deterministic: bool) -> dict:
  return model(
    batch["inputs"], batch["segment_ids"], batch.get("chars"), deterministic=deterministic
  )


def flops_per_token(c: LSTMConfig, seq_len: int, target_len: int = 0) -> float:
  """Training FLOPs per token: 4 gates x (input + recurrent) matmuls, two directions, x 3."""
  del seq_len, target_len
  flops, width = 0.0, c.embed_dim + (c.char_filters if c.char_dim else 0)
  for _ in range(c.num_layers):
    flops += 2 * 2 * 4 * c.hidden_dim * (width + c.hidden_dim)
    width = 2 * c.hidden_dim
  return 3.0 * flops
