"""Will a fine-tuning run fit? Its train step compiled ahead of time, with what each part of
the state holds on one device.

`python finetune.py --config=<file> --workdir=<dir> --dry_run` does what training does up to
the first step (reads the records for the labels and the tokenizer, takes init_from's backbone
as training would, builds the task model on its mesh, with LoRA adapters and a quantized base
where the config asks for them; writes nothing to the workdir) and then, instead of
training, compiles the train step on a batch of the run's longest example (the worst case
for activations) and prints, per device:

  frozen parameters    the base a LoRA run does not train (int8 / 4-bit under QLoRA)
  trained parameters   everything (full fine-tuning), or the adapters and saved modules
  optimizer state      AdamW's two moments of the trained parameters
  temporaries          gradients, the activations kept for the backward pass, workspace
  peak                 XLA's buffer assignment of the whole step

State sizes are counted from the sharded abstract state (exact); temporaries and the peak
come from XLA's memory analysis of the compiled step. On CPU the program is compiled by
XLA:CPU, so these are an estimate of an accelerator's (see flaxlm.pretraining.memory).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from flax import traverse_util

from flaxlm.config.finetuning import FinetuneConfig
from flaxlm.finetuning import run as finetuning
from flaxlm.finetuning.inputs import check
from flaxlm.nn import quantize, sharding
from flaxlm.pretraining.memory import GiB, MemoryReport
from flaxlm.train import validation

MiB = 2**20


def per_device_bytes(tree) -> int:
  """Bytes one device holds of sharded abstract arrays (the largest shard of each)."""
  shard = lambda x: x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
  return quantize.weight_bytes(tree, shard)


def elements(x) -> int:
  """Parameters in a leaf of the tree: a quantized kernel counts its int values."""
  return math.prod((x.array.qvalue if quantize.is_quantized(x) else x).shape)


@dataclasses.dataclass(frozen=True)
class StateBytes:
  """Per-device bytes of a train state, by part."""

  frozen: int
  trained: int
  optimizer: int
  num_frozen: int  # parameters (elements; a quantized kernel counts its int values)
  num_trained: int
  trained_dtypes: tuple[str, ...]

  @classmethod
  def of(cls, trainable) -> StateBytes:
    state = trainable.abstract_state
    flat = traverse_util.flatten_dict(state.params)
    frozen = {k: v for k, v in flat.items() if k in trainable.frozen_paths}
    trained = {k: v for k, v in flat.items() if k not in trainable.frozen_paths}
    count = lambda d: sum(elements(v) for v in d.values())
    return cls(
      frozen=per_device_bytes(list(frozen.values())),
      trained=per_device_bytes(list(trained.values())),
      optimizer=per_device_bytes(state.opt_state),
      num_frozen=count(frozen),
      num_trained=count(trained),
      trained_dtypes=tuple(sorted({str(v.dtype) for v in trained.values()})),
    )


def longest_batch(prepared, ft: FinetuneConfig, mesh) -> dict:
  """The first training batch of a run whose every example is its longest one."""
  task = prepared.task
  longest = max(prepared.examples, key=task.tokens_per_example)
  rows = finetuning.training_rows(
    task,
    [longest] * (ft.batch_size * task.group),
    ft.batch_size,
    ft.seed,
    getattr(task.config, "max_len", 0),
    sharding.data_parallel_size(mesh),
    ft.step.accum_steps,
  )
  return rows[0]


def dry_run(ft: FinetuneConfig) -> tuple[str, dict]:
  """(report text, figures in bytes) of the run's train step, compiled and not run."""
  check(ft)
  mesh = validation.make_mesh(ft.mesh)
  prepared = finetuning.prepare(ft, None, mesh)
  ft = prepared.ft
  trainable = finetuning.build(
    prepared.task, prepared.family, prepared.model_config, ft, mesh, prepared.teacher
  )
  batch_sharding = sharding.batch_sharding(mesh)
  batch = {
    k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype, sharding=batch_sharding)
    for k, v in longest_batch(prepared, ft, mesh).items()
  }
  with trainable.context():
    compiled = trainable.jitted_train_step.lower(trainable.abstract_state, batch).compile()
  report = MemoryReport.of(compiled, mesh.devices.flat[0])
  state = StateBytes.of(trainable)
  total = state.num_frozen + state.num_trained
  c, lo = prepared.model_config, ft.lora
  how = "full fine-tuning"
  if lo.rank:
    how = f"LoRA rank {lo.rank}" + (f" over a {lo.quantize_base} base (QLoRA)" if lo.quantize_base else "")  # fmt: skip
  shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in batch.items())
  row = lambda name, n: f"  {name:26s}{n / GiB:9.3f} GiB ({n / MiB:,.1f} MiB)"
  text = "\n".join(
    [
      f"dry run: {ft.task_name} on {prepared.family} ({total / 1e6:.1f}M parameters), {how}: "
      f"{state.num_trained:,} trained ({100 * state.num_trained / total:.2f}%); mesh "
      f"{dict(mesh.shape)} of {mesh.devices.size} {mesh.devices.flat[0].platform} devices",
      f"  batch of the longest training example: {shapes}; accum_steps {ft.step.accum_steps}; "
      f"dtype {getattr(c, 'dtype', '?')}; remat {getattr(c, 'remat_policy', '-')}",
      "per device:",
      row("frozen parameters", state.frozen),
      row("trained parameters", state.trained) + f" in {', '.join(state.trained_dtypes)}",
      row("optimizer state", state.optimizer),
      row("temporaries (activations,", report.temporaries),
      "   gradients, workspace)",
      *report.lines()[5:],  # the peak, and the devices it fits
    ]
  )
  figures = {
    "how": how,
    "parameters": total,
    "trained": state.num_trained,
    "frozen_bytes": state.frozen,
    "trained_bytes": state.trained,
    "trained_dtypes": list(state.trained_dtypes),
    "optimizer_bytes": state.optimizer,
    "temporary_bytes": report.temporaries,
    "peak_bytes": report.peak,
    "devices": int(mesh.devices.size),
  }
  return text, figures
