"""Padding-free classification (`task.padding_free`, `pipeline.pack_collate`): a step's
examples share rows and the model computes what it computes on one padded row per example.
"""

import json

import jax
import numpy as np
import pytest
from samples import Tok, lstm_config

from flaxlm.config import finetuning as config_finetune
from flaxlm.data import pipeline
from flaxlm.errors import ConfigError
from flaxlm.finetuning import run as finetuning
from flaxlm.models import heads, registry
from flaxlm.nn.losses import LossConfig
from flaxlm.tasks import Columns, task_class


def test_pack_collate_lays_whole_examples_in_rows():
  lengths = [5, 3, 7, 2, 8, 1, 4, 6]
  examples = [
    {
      "inputs": np.arange(100 * i, 100 * i + n, dtype=np.int32),
      "segment_ids": np.ones(n, np.int32),
      "labels": np.int32(i),
    }
    for i, n in enumerate(lengths)
  ]
  batch = pipeline.pack_collate({"inputs": 0, "segment_ids": 0}, 8, row_multiple=2)(examples)
  # 36 tokens fill 5 rows of 8 (8 | 7 1 | 6 2 | 5 3 | 4), rounded to 6: a multiple of 2
  assert batch["inputs"].shape == (6, 8)
  assert np.sum(batch["segment_ids"] > 0) == sum(lengths)  # every token once, none lost
  np.testing.assert_array_equal(batch["labels"], np.arange(len(lengths)))  # examples' order
  flat = {k: batch[k].reshape(-1) for k in ("inputs", "segment_ids", "positions")}
  for e, start in zip(examples, batch["pool_index"], strict=True):
    n = len(e["inputs"])
    np.testing.assert_array_equal(flat["inputs"][start : start + n], e["inputs"])
    np.testing.assert_array_equal(flat["positions"][start : start + n], np.arange(n))
    segment = flat["segment_ids"][start : start + n]
    assert len(set(segment)) == 1 and segment[0] > 0
    row = start // 8  # the example's segment id is its alone in its row
    assert np.sum(batch["segment_ids"][row] == segment[0]) == n


def tiny_task(**task):
  cls = task_class("classification")
  family = registry.family_of("bert")
  model_config = family.config_cls(vocab_size=64, num_layers=2, num_heads=2, embed_dim=16,
                                   mlp_dim=32, max_len=32, dropout_rate=0.0)  # fmt: skip
  config = cls.Config(max_len=16, dropout_rate=0.0, **task)
  task = cls(config, Columns(), family, model_config, Tok(), ["0", "1"])
  model = task.model(registry.build_model("bert", model_config))
  rng = np.random.default_rng(0)
  records = [
    {"text": "".join(rng.choice(list("abcdef"), rng.integers(1, 14))), "label": str(i % 2)}
    for i in range(8)
  ]
  return task, model, [task.example(r) for r in records]


def test_packed_rows_give_the_padded_loss_and_gradients():
  """Loss and gradients of 8 examples in padded rows (one each) equal those of the same
  examples packed padding-free into fewer rows: attention stays within each example and its
  positions restart."""
  task, model, examples = tiny_task(padding_free=True)
  padded = pipeline.pad_collate(task.pad_values)(examples)
  packed = task.train_collate(1)(examples)
  assert packed["inputs"].size < padded["inputs"].size
  params = model.init(jax.random.key(0), heads.dummy_batch(1))["params"]

  def loss(p, batch):
    out = task.loss(model, p, batch, None, True, LossConfig())
    return out["loss_sum"] / out["weight_sum"]

  loss_and_grads = jax.jit(jax.value_and_grad(loss))
  want, want_grads = loss_and_grads(params, padded)
  got, got_grads = loss_and_grads(params, packed)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.slow  # the loop test below also runs padding-free on 8 data-parallel devices
def test_packed_rows_on_a_sharded_mesh_equal_one_device(sharded_equals_single_device):
  task, model, examples = tiny_task(padding_free=True)
  batch = task.train_collate(4)(examples)  # rows split over the 2 x 2 data-parallel devices
  assert batch["inputs"].shape[0] % 4 == 0
  sharded_equals_single_device(model, task.loss, batch, (2, 2, 2), init_batch=heads.dummy_batch(1))


def bert_config(tmp, **overrides):
  c = lstm_config(tmp, **overrides)
  config_finetune.with_model_preset(c, "bert", "bert_tiny")
  c.model.update(num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64, max_len=64, dropout_rate=0.0)
  c.tokenizer.update(kind="wordpiece", vocab_size=200, special_tokens="bert", lowercase=True)
  c.task.max_len = 32
  c.update(num_train_steps=12, eval_every=6, checkpoint_every=6, log_every=1, learning_rate=3e-3)
  return c


def test_padding_free_finetuning_trains_as_padded(tmp_path):
  """finetuning.train on 8 emulated data-parallel devices, padded, padding-free, and
  padding-free in 2 accumulated microbatches: the same losses step by step and the same dev
  accuracy."""
  results, losses = {}, {}
  for padding_free, accum in ((False, 1), (True, 1), (True, 2)):
    workdir = tmp_path / f"padding_free_{padding_free}_{accum}"
    c = bert_config(tmp_path, accum_steps=accum)
    c.task.padding_free = padding_free
    results[accum, padding_free] = finetuning.train(config_finetune.from_config_dict(c), workdir)
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses[accum, padding_free] = [x["loss"] for x in lines if "loss" in x]
  assert len(losses[1, True]) == len(losses[2, True]) == 12
  for run in ((1, True), (2, True)):
    np.testing.assert_allclose(losses[run], losses[1, False], rtol=2e-4)
    assert results[run]["eval_accuracy"] == results[1, False]["eval_accuracy"]


def test_microbatches_are_packed_apart_and_interleaved():
  """pack_collate for accum_steps=2: each half of the examples packed into rows of its own,
  laid out as the train step splits a batch (microbatch i: rows i, i + 2, ...)."""
  task, _, examples = tiny_task(padding_free=True)
  both = task.train_collate(2, microbatches=2)(examples)
  halves = [task.train_collate(2)(examples[:4]), task.train_collate(2)(examples[4:])]
  rows = max(h["inputs"].shape[0] for h in halves)
  for i, half in enumerate(halves):
    micro = {k: v[i::2] for k, v in both.items()}
    np.testing.assert_array_equal(micro["labels"], half["labels"])
    np.testing.assert_array_equal(micro["pool_index"], half["pool_index"])
    for key in ("inputs", "segment_ids", "positions"):
      assert micro[key].shape[0] == rows
      n = half[key].shape[0]
      np.testing.assert_array_equal(micro[key][:n], half[key])
      assert not micro[key][n:].any()  # rows added to match the other half: padding


def test_padding_free_is_refused_where_it_cannot_work(tmp_path):
  c = lstm_config(tmp_path)
  c.task.padding_free = True
  with pytest.raises(ConfigError, match="model family 'lstm'"):
    finetuning.train(config_finetune.from_config_dict(c), tmp_path / "lstm")
