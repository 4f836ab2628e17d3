"""Running a task's model over a set of records: loss, predictions and library metrics.

Records become examples once; batches are padded to a fixed `batch_size` with weightless
rows (example_weight 0) so every batch has a compiled shape and every device a share, and
widths are bucketed as in training. Predictions come back replicated on every host, are cut
to the real rows and handed to the task, which scores them on the host (scikit-learn,
seqeval, ...) or turns them into output records.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from flaxlm.data import pipeline
from flaxlm.nn import sharding
from flaxlm.tasks.base import Task, prefixed
from flaxlm.train.steps import Trainable


@dataclasses.dataclass
class EvalSet:
  """A fixed set of records with their examples, in padded global batches."""

  records: list[dict]
  batches: list[dict]  # numpy, each of batch_size rows
  count: int  # real rows (the rest pad the last batch)
  owners: list[int]  # the record of each example (a record may have several)


def eval_set(task: Task, records: list[dict], batch_size: int, max_width: int) -> EvalSet:
  examples, owners = [], []
  for i, record in enumerate(records):
    for example in task.examples(record):
      examples.append(example)
      owners.append(i)
  if not examples:
    return EvalSet(records, [], 0, [])
  filler = {**examples[0], "example_weight": np.float32(0.0)}
  padded = examples + [filler] * (-len(examples) % batch_size)
  collate = pipeline.pad_collate(task.pad_values, max_width=max_width)
  batches = [collate(padded[i : i + batch_size]) for i in range(0, len(padded), batch_size)]
  return EvalSet(records, batches, len(examples), owners)


def predictions(
  task: Task, trainable: Trainable, params, data: EvalSet, generate: bool | None = None
) -> tuple[dict, dict]:
  """(predictions: key -> list of per-example arrays, plus 'record': each example's record
  index and, for tasks that write text, 'text'; summed loss quantities). `generate`
  overrides whether text tasks decode (evaluations may skip it for speed)."""
  predict = _compiled(trainable, "predict_and_loss", _predict_and_loss(task, trainable))
  batch_sharding = sharding.batch_sharding(trainable.mesh)
  out: dict[str, list] = {}
  sums = None
  for batch in data.batches:
    rows, s = jax.device_get(predict(params, sharding.to_global(batch, batch_sharding)))
    for key, value in rows.items():
      out.setdefault(key, []).extend(list(np.asarray(value)))
    sums = s if sums is None else jax.tree.map(np.add, sums, s)
  preds = {k: v[: data.count] for k, v in out.items()}
  preds["record"] = list(data.owners)
  if hasattr(task, "generate") and (
    getattr(task, "generates", False) if generate is None else generate
  ):
    preds["text"] = task.generate(trainable, params, data.records)
  return preds, sums or {}


def stacked(preds: dict) -> dict:
  """Per-record arrays of one shape stacked into (N, ...) arrays; ragged ones left as lists."""
  out = {}
  for key, rows in preds.items():
    arrays = rows and all(isinstance(r, np.ndarray | np.generic) for r in rows)
    shapes = {np.shape(r) for r in rows}
    out[key] = np.stack(rows) if arrays and len(shapes) == 1 else rows
  return out


def evaluate(task: Task, trainable: Trainable, params, data: EvalSet, generate=None) -> dict:
  """eval_loss and the task's metrics (eval_ prefixed) over `data`; `generate` as in
  `predictions` (text tasks: decode and score the text, or report the loss alone)."""
  preds, sums = predictions(task, trainable, params, data, generate)
  weight = max(float(sums.get("weight_sum", 0.0)), 1.0)
  out = {"eval_loss": float(sums.get("loss_sum", math.nan)) / weight}
  out.update(prefixed(task.score(stacked(preds), data.records)))
  return out


class Remembered:
  """The loop's evaluations of a task, keeping the last one whole: when it scored the params
  the run ends with (the best, or no best kept) and decoded text as the final one would, the
  final evaluation is that one, not a second dev pass (minutes with beam search)."""

  def __init__(self, task: Task, trainable: Trainable, data: EvalSet):
    self.task, self.trainable, self.data = task, trainable, data
    self.last: dict | None = None

  def evaluate(self, params) -> dict:
    self.last = evaluate(self.task, self.trainable, params, self.data)
    return self.last

  def scored_final(self, result) -> bool:
    """True when the last evaluation stands for the final one of `result` (a loop.Result)."""
    if self.last is None or result.interrupted or result.early_stopped:
      return False
    best_is_last = result.best is None or result.best.get("step") == result.step
    return best_is_last and getattr(self.task, "generates", True)


def scalars(metrics: dict) -> dict:
  """The numeric metrics (what metrics.jsonl and the progress line take)."""
  return {
    k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
  }


def _predict_and_loss(task: Task, trainable: Trainable):
  """(per-row predictions, summed loss quantities) of a batch in one compiled call: the two
  share the model's forward pass (XLA merges the identical computations), where separate
  calls ran it twice."""
  loss = trainable.eval_loss
  return lambda params, batch: (task.predict(trainable.model, params, batch), loss(params, batch))


def _compiled(trainable: Trainable, name: str, fn):
  cache = trainable.__dict__.setdefault("_compiled", {})
  if name not in cache:
    cache[name] = trainable.jit_params_batch(fn)
  return cache[name]
