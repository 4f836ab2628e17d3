"""A model family and a task added from outside flaxlm, each a module's worth of code and one
registry call, as a user would add an architecture or a task: no flaxlm file changes.
Imported by the config files of tests/test_registries.py (a config file is Python: importing
this module registers both before the config is read).

  toy     a decoder: token embedding, a causal running mean, one projection, tied logits
  match   do two texts share a word? ('left', 'right' columns of its own; a sequence head)
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from flaxlm import tasks
from flaxlm.data.formats import field
from flaxlm.models import registry
from flaxlm.models.heads import TaskModel
from flaxlm.nn import losses
from flaxlm.nn.projection import dense
from flaxlm.tasks.base import Task, TaskConfig, bounded, encode_inputs


@dataclasses.dataclass(frozen=True)
class ToyConfig:
  vocab_size: int = 0  # 0: the tokenizer's
  embed_dim: int = 16
  max_len: int = 64
  dropout_rate: float = 0.0
  dtype: str = "float32"
  attention_impl: str = "auto"  # it has no attention; pretraining's FLOP count asks

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


class ToyLM(nn.Module):
  """tokens (B, T) -> logits (B, T, V), or hidden states (B, T, D) with features=True."""

  config: ToyConfig

  @nn.compact
  def __call__(self, tokens, positions=None, segment_ids=None, deterministic=True,
               features=False):  # fmt: skip
    c = self.config
    embed = nn.Embed(c.vocab_size, c.embed_dim, name="embed")
    x = embed(tokens)
    if segment_ids is not None:
      x = x * (segment_ids > 0)[..., None]
    x = jnp.cumsum(x, axis=1) / jnp.arange(1, tokens.shape[1] + 1)[None, :, None]  # causal
    x = jnp.tanh(dense(c.embed_dim, ("embed", "mlp"), "mix")(x))
    return x if features else embed.attend(x).astype(jnp.float32)


def toy_features(model, batch, deterministic):
  hidden = model(batch["inputs"], segment_ids=batch["segment_ids"], features=True)
  last = jnp.maximum(jnp.sum(batch["segment_ids"] > 0, axis=1) - 1, 0)  # the last real token
  return {"hidden": hidden, "pooled": hidden[jnp.arange(hidden.shape[0]), last]}


registry.register(
  registry.Family(
    "toy", ToyConfig, {"tiny": ToyConfig()}, ToyLM,
    lambda c, seq_len, target_len=0, causal=False: 6.0 * c.embed_dim * (c.embed_dim + c.vocab_size),
    ("causal_lm",), toy_features, "decoder",
  )
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class MatchConfig(TaskConfig):
  max_len: int = bounded(64, 4, why="tokens of both texts, specials included")


@tasks.register
class Match(Task):
  name = "match"
  Config = MatchConfig
  metric = "eval_accuracy"
  head_kind = "sequence"
  own_columns = {"left": "left", "right": "right"}
  pad_values = {"inputs": 0, "segment_ids": 0, "type_ids": 0}

  @classmethod
  def metric_names(cls, config):
    return ("loss", "accuracy")

  @classmethod
  def fit_labels(cls, config, columns, records):
    return ["no", "yes"]

  def key(self, record):
    return (field(record, self.columns.left, "left"), field(record, self.columns.right, "right"))

  def example(self, record):
    left, right = self.key(record)
    out = encode_inputs(self.tokenizer, str(left), str(right), self.config.max_len)
    out["labels"] = np.int32(bool(set(str(left).split()) & set(str(right).split())))
    out["example_weight"] = np.float32(1.0)
    return out

  def model(self, backbone):
    return TaskModel(backbone, self.family.features, self.head_kind, 2, 0.0)

  def loss(self, model, params, batch, rng, deterministic, loss_config):
    logits = model.apply({"params": params}, batch, deterministic=deterministic)
    weights = batch["example_weight"][:, None]
    return losses.cross_entropy(logits[:, None], batch["labels"][:, None], weights)

  def predict(self, model, params, batch):
    return {"label": jnp.argmax(model.apply({"params": params}, batch), -1)}

  def score(self, predictions, records):
    gold = np.asarray([self.example(r)["labels"] for r in records])
    return {"num_examples": len(records), "accuracy": float(np.mean(predictions["label"] == gold))}

  def outputs(self, predictions, records):
    return [{"prediction": self.labels[int(p)]} for p in predictions["label"]]
