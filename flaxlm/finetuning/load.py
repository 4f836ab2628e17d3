"""A fine-tuned workdir: load its best model (task, labels, tokenizer and column mapping come
from the checkpoint), evaluate it on a record set, predict with it.

  finetune.py --mode=evaluate   -> evaluate(workdir, eval_data)   (writes eval_<name>.json)
  finetune.py --mode=predict    -> predict(workdir, eval_data, output)
  flaxlm.load / predict / evaluate -> load, predict_records, evaluate_records
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import jax

from flaxlm.config.finetuning import from_saved
from flaxlm.data import formats, tokenizers
from flaxlm.errors import CheckpointMismatchError, DataError, DataNotFoundError, WorkdirError
from flaxlm.finetuning import evaluation, frozen_base
from flaxlm.finetuning.model import Model, build
from flaxlm.models import registry
from flaxlm.nn import lora, quantize, sharding
from flaxlm.nn.lora import LoraConfig
from flaxlm.tasks import Columns, Task, config_from_block, task_class
from flaxlm.train import ptq, reporting
from flaxlm.train.checkpoint import Checkpointer
from flaxlm.workdir import Workdir


def workdir_kind(workdir) -> str | None:
  """'finetune' or 'pretraining' (what the workdir's newest checkpoint holds), or None."""
  workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
  for source in (workdir.best, workdir.checkpoints):
    if source.exists():
      ckpt = Checkpointer(source, async_save=False, create=False)
      try:
        meta = ckpt.restore_meta()
      finally:
        ckpt.close()
      if meta:
        return meta.get("kind", "pretraining")
  return None


# --- evaluate, predict, load ------------------------------------------------------------------


def load(workdir, mesh=None, columns: dict | None = None, task: dict | None = None) -> Model:
  """The fine-tuned model of a workdir (its best checkpoint, else its newest), with its task,
  labels, tokenizer and column mapping; `columns` overrides fields of the mapping and `task`
  fields of the task's config (how it decodes: {'beam_size': 4})."""
  workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
  source = workdir.best if workdir.best.exists() else workdir.checkpoints
  if not source.exists():
    raise DataNotFoundError(
      f"no fine-tuned checkpoint in {workdir}; train one with python finetune.py "
      f"--config=configs/<task>.py --workdir={workdir}"
    )
  ckpt = Checkpointer(source, async_save=False, create=False)
  try:
    meta = ckpt.restore_meta()
  finally:
    ckpt.close()
  if meta is None or meta.get("kind") != "finetune":
    raise CheckpointMismatchError(
      f"{workdir} holds no fine-tuning checkpoint (a pretraining run? use generate.py or point "
      "a fine-tuning config's init_from at it)"
    )
  ft = from_saved(meta["config"])
  saved = meta["task"]
  cls = task_class(saved["name"])
  task_config = config_from_block(cls, {
    **{k: tuple(v) if isinstance(v, list) else v for k, v in saved["config"].items()},
    **(task or {}),
  })  # fmt: skip
  column_fields = {**saved["columns"], **(columns or {})}
  family = meta["model_family"]
  model_config = registry.model_config(family, meta["model"])
  tokenizer = tokenizers.tokenizer_from_json(meta["tokenizer"])
  task_obj = cls(task_config, Columns.of(column_fields), registry.family_of(family), model_config,
             tokenizer, saved["labels"])  # fmt: skip
  mesh = mesh or sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  # Adapters are part of the tree: their settings come from what the checkpoint recorded (a
  # library run saves no config JSON).
  saved_lora = meta.get("lora") or meta.get("resume_keys", {}).get("lora")
  adapters = LoraConfig(**(saved_lora or dataclasses.asdict(ft.lora)))
  ft = dataclasses.replace(ft, freeze_backbone=False, mesh=dict(mesh.shape), lora=adapters)
  trainable = build(task_obj, family, model_config, ft, mesh)
  rebuild = lambda meta: frozen_base.rebuild(trainable, meta["base"], task_obj.layout, source)
  params, _ = frozen_base.restore_params(
    source, trainable, rebuild, whole_state=source != workdir.best
  )
  init_from = meta.get("resume_keys", {}).get("init_from", ft.init_from)
  return Model(task_obj, trainable, tokenizer, family, model_config, params, adapters, init_from)


def quantized(model: Model, mode: str) -> Model:
  """`model` with weight-only `mode` ('int8' | 'int4') projections (`flaxlm.nn.quantize`); a
  LoRA model's adapters are merged into its kernels first."""
  params, module = model.params, None
  if model.lora.rank:
    params = lora.merged(jax.device_get(params), model.lora)
    module = model.task.model(registry.build_model(model.family, model.model_config))
  trainable, qparams = ptq.quantized(model.trainable, params, mode, module)
  return dataclasses.replace(model, trainable=trainable, params=qparams, lora=LoraConfig())


def load_hf(path: str, task: str = "", num_labels: int = 0, labels=None, mesh=None, seed=0):
  """A Hugging Face model folder as flaxlm sees it. Without `task`: `flaxlm.convert.Imported`
  (family, model_config, params, tokenizer; `.model()` is its module). With a flaxlm task
  name: a `Model` that `predict`, `evaluate` and fine-tuning take, its head the checkpoint's
  when the folder holds that task's head (labels from its config.json), else a fresh one
  (seeded) over `labels` or `num_labels` classes."""
  from flax import traverse_util

  from flaxlm.config.finetuning import finetune_config, from_config_dict
  from flaxlm.convert import load_hf as import_folder
  from flaxlm.pretraining import transfer

  imported = import_folder(path)
  if not task:
    return imported
  cls = task_class(task)  # names the valid tasks when `task` is not one
  # the folder holds this task's head (flaxlm.convert's `Imported.task` is a head kind)
  head = cls.head_for(registry.family_of(imported.family))
  same_head = head is not None and imported.task == head
  if labels is None:
    labels = imported.labels if same_head and imported.labels else None
    labels = labels or [str(i) for i in range(num_labels)]
  labelled = cls.fit_labels.__func__ is not Task.fit_labels.__func__  # the task has a label set
  if labelled and not labels:
    raise DataError(f"load('hf:{path}', task={task!r}) needs num_labels= or labels=")
  labels = labels if labelled else None
  c = finetune_config()
  c.task.name = task
  ft = from_config_dict(c)
  mesh = mesh or sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  ft = dataclasses.replace(ft, mesh=dict(mesh.shape))
  family = imported.family
  task_obj = cls(ft.task, ft.columns, registry.family_of(family), imported.model_config,
                 imported.tokenizer, list(labels) if labels else None)  # fmt: skip
  trainable = build(task_obj, family, imported.model_config, ft, mesh)
  pretrained = transfer.from_imported(imported, f"hf:{path}")
  overrides = transfer.backbone_overrides(
    trainable.abstract_state.params, pretrained, task_obj.layout
  )
  if same_head:  # the checkpoint's own head, where its shapes fit
    want = traverse_util.flatten_dict(trainable.abstract_state.params)
    have = traverse_util.flatten_dict(imported.params)
    overrides |= {k: v for k, v in have.items() if k in want and want[k].shape == v.shape}
  params = trainable.init_state(seed, overrides).params
  return Model(task_obj, trainable, imported.tokenizer, family, imported.model_config, params)


def _eval_batch_size(model: Model, requested: int) -> int:
  dp = sharding.data_parallel_size(model.trainable.mesh)
  return max(dp, -(-requested // dp) * dp)


def evaluate(
  workdir,
  eval_data: str,
  columns: dict | None = None,
  batch_size: int = 32,
  task=None,
  quantize_to: str = "",
) -> dict:
  """Metrics of a workdir's best checkpoint on `eval_data` (written to eval_<name>.json);
  `columns` and `task` override the saved column mapping and task fields (see `load`).
  `quantize_to` ('int8' | 'int4'): the metrics of the weight-only quantized model (written to
  eval_<name>_<mode>.json), with the float model's beside them under 'float' and the bytes of
  both models' parameters under 'param_bytes'."""
  if quantize_to:
    quantize.check_mode(quantize_to)
  formats.check(eval_data, "eval_data")
  model = load(workdir, columns=columns, task=task)
  c = model.task.columns
  records = formats.read(eval_data, c.word_index, c.tag_index, "eval_data")
  if not records:
    raise DataError(f"eval_data={eval_data!r} holds no records")
  width = getattr(model.task.config, "max_len", 0)
  data = evaluation.eval_set(model.task, records, _eval_batch_size(model, batch_size), width)
  metrics = evaluation.evaluate(model.task, model.trainable, model.params, data, generate=True)
  workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
  name = reporting.data_name(eval_data)
  if quantize_to:
    q = quantized(model, quantize_to)
    floats = metrics
    metrics = evaluation.evaluate(q.task, q.trainable, q.params, data, generate=True)
    sizes = {
      "float": quantize.weight_bytes(model.params),
      quantize_to: quantize.weight_bytes(q.params),
    }
    name = f"{name}_{quantize_to}"
  reporting.write_eval_report(workdir, name, metrics, model.task.labels)
  if quantize_to:
    metrics = {**metrics, "quantize": quantize_to, "float": floats, "param_bytes": sizes}
  return metrics


def predict(
  workdir,
  eval_data: str,
  output: str,
  columns: dict | None = None,
  batch_size: int = 32,
  task=None,
  quantize_to: str = "",
) -> int:
  """Writes one JSON object per record of `eval_data` to `output`; returns how many.
  `quantize_to` ('int8' | 'int4'): predicted by the weight-only quantized model."""
  if quantize_to:
    quantize.check_mode(quantize_to)
  formats.check(eval_data, "eval_data")
  _prepare_output(output)
  model = load(workdir, columns=columns, task=task)
  model = quantized(model, quantize_to) if quantize_to else model
  c = model.task.columns
  records = formats.read(eval_data, c.word_index, c.tag_index, "eval_data")
  width = getattr(model.task.config, "max_len", 0)
  data = evaluation.eval_set(model.task, records, _eval_batch_size(model, batch_size), width)
  preds, _ = evaluation.predictions(model.task, model.trainable, model.params, data, generate=True)
  rows = model.task.outputs(evaluation.stacked(preds), records)
  if jax.process_index() == 0:
    with open(output, "w", encoding="utf-8") as f:
      for record, row in zip(records, rows, strict=True):
        f.write(json.dumps({"source": record[formats.WHERE], **row}, ensure_ascii=False) + "\n")
  return len(rows)


def _prepare_output(output: str) -> None:
  """Creates the folder of `output` (as --workdir is created), before any model loads, so
  a path that cannot be written fails before the predictions are computed."""
  path = pathlib.Path(output).expanduser()
  if path.is_dir():
    raise WorkdirError(
      f"--output={output} is a directory; name a file, e.g. {path}/predictions.jsonl"
    )
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"--output={output}: cannot create its folder ({e.strerror})") from None
  if not os.access(path.parent, os.W_OK):
    raise WorkdirError(f"--output={output}: its folder {path.parent} is not writable")


def records_set(model: Model, records: list[dict], batch_size: int):
  width = getattr(model.task.config, "max_len", 0)
  records = [{formats.WHERE: f"record {i}", **r} for i, r in enumerate(records)]
  return evaluation.eval_set(model.task, records, _eval_batch_size(model, batch_size), width)


def predict_records(model: Model, records: list[dict], batch_size: int = 32) -> list[dict]:
  """The task's output for each record (dicts with the model's columns), in order."""
  data = records_set(model, records, batch_size)
  preds, _ = evaluation.predictions(model.task, model.trainable, model.params, data, generate=True)
  return model.task.outputs(evaluation.stacked(preds), data.records)


def evaluate_records(model: Model, records: list[dict], batch_size: int = 32) -> dict:
  """The task's metrics on labelled records."""
  data = records_set(model, records, batch_size)
  return evaluation.evaluate(model.task, model.trainable, model.params, data, generate=True)
