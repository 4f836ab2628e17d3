"""Task heads beside a backbone: the models fine-tuning trains.

A `TaskModel` reads the backbone's features (its family's `features` function: per-token
hidden states and a pooled summary) and applies one dense head. Its parameters are
{'backbone': <the backbone's own tree>, '<head>': ...}, so a backbone restored from
pretraining or Hugging Face sits unchanged under 'backbone', and heads keep the names
Hugging Face gives them ('classifier', 'qa_outputs').
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from flaxlm.models.param_trees import HEAD_NAMES
from flaxlm.nn.projection import dense


class TaskModel(nn.Module):
  """batch -> float32 logits: (B, num_outputs) for 'sequence' (from the pooled features),
  (B, T, num_outputs) for 'token' and 'span' (from the hidden states; span: start and end)."""

  backbone: nn.Module
  features: Callable  # (backbone, batch, deterministic) -> {'hidden', 'pooled'}
  head: str  # sequence | token | span
  num_outputs: int
  dropout_rate: float = 0.1

  @nn.compact
  def __call__(self, batch: dict, deterministic: bool = True):
    f = self.features(self.backbone, batch, deterministic)
    x = f["pooled"] if self.head == "sequence" else f["hidden"]
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    # dtype None: the features' dtype promoted with the f32 kernel, as nn.Dense computed it
    logits = dense(self.num_outputs, ("embed", "labels"), HEAD_NAMES[self.head], dtype=None)(x)
    return logits.astype(jnp.float32)


def dummy_batch(batch_size: int, seq_len: int = 8, chars: int = 0) -> dict:
  """Inputs that trace every backbone (for `init`)."""
  out = {
    "inputs": jnp.zeros((batch_size, seq_len), jnp.int32),
    "segment_ids": jnp.ones((batch_size, seq_len), jnp.int32),
    "type_ids": jnp.zeros((batch_size, seq_len), jnp.int32),
  }
  if chars:
    out["chars"] = jnp.ones((batch_size, seq_len, chars), jnp.int32)
  return out
