"""Fine-tuning: a task on a backbone, handed to the shared loop (`flaxlm.train.loop`).

`train` checks the config before reading data, takes the backbone (a pretraining workdir's
newest checkpoint through `init_from`, or a fresh model and tokenizer), reads and cleans the
records, builds the task model with its sharded state, trains with evaluations on the dev
set, keeps the best checkpoint on the dev metric, and ends by evaluating that checkpoint.
`evaluate` and `predict` load the best checkpoint of a workdir; its task, tokenizer, labels
and column mapping come from the checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math

import jax
import numpy as np

from flaxlm.config import check_same_settings, setting_values
from flaxlm.config.finetuning import FinetuneConfig, from_saved
from flaxlm.data import corpus, pipeline, tokenizers
from flaxlm.errors import CheckpointMismatchError, ConfigError, DataNotFoundError
from flaxlm.finetuning import distill, evaluation, frozen_base
from flaxlm.finetuning import load as finetuned
from flaxlm.finetuning.inputs import check, clean, read_records, texts_for_tokenizer  # noqa: F401
from flaxlm.finetuning.model import Model, build
from flaxlm.models import registry
from flaxlm.nn import pruning, sharding
from flaxlm.pretraining import transfer
from flaxlm.tasks import task_class
from flaxlm.train import loop, reporting, validation
from flaxlm.train.checkpoint import Checkpointer
from flaxlm.workdir import Workdir, WorkdirLock

log = logging.getLogger("flaxlm")


def _model_config(ft: FinetuneConfig, base, vocab_size: int, chars: int):
  """The backbone config: `base` (pretrained) with the run's runtime keys, or a fresh one."""
  if base is not None:
    sized_by_data = ("vocab_size", "char_vocab_size")  # 0: from the tokenizer, as saved
    changed = {
      k: v
      for k, v in ft.model_overrides.items()
      if getattr(base, k) != v and not (k in sized_by_data and not v)
    }
    fixed = sorted(set(changed) - set(registry.RUNTIME_KEYS))
    if fixed:
      raise ConfigError(
        f"the checkpoint (init_from's, or the run's being resumed) fixes the architecture; "
        f"model keys {fixed} differ from the checkpoint's "
        f"{ {k: getattr(base, k) for k in fixed} } (only {list(registry.RUNTIME_KEYS)} may change)"
      )
    return dataclasses.replace(base, **changed)
  fields = dict(ft.model_overrides)
  if not fields.get("vocab_size"):
    fields["vocab_size"] = registry.padded_vocab(vocab_size, ft.pad_vocab_to)
  if fields.get("char_dim") and not fields.get("char_vocab_size"):  # a char CNN (BiLSTM)
    fields["char_vocab_size"] = chars
  return registry.model_config(ft.model_family, fields)


def _meta(task, tokenizer, family, model_config, ft: FinetuneConfig, ft_json: dict) -> dict:
  return {
    "kind": "finetune",
    "tokenizer": tokenizer.to_json(),
    "model_family": family,
    "model": dataclasses.asdict(model_config),
    "task": {
      "name": task.name,
      "config": dataclasses.asdict(task.config),
      "labels": task.labels,
      "columns": dataclasses.asdict(task.columns),
    },
    "config": ft_json,
    "resume_keys": setting_values(ft, resume_keys(ft)),
    "lora": dataclasses.asdict(ft.lora),  # what load rebuilds (adapters_from's settings too)
  }


# --- training ---------------------------------------------------------------------------------

# Keys whose change would reinterpret a saved run (its data order, labels or model).
RESUME_KEYS = ("task_name", "train_data", "eval_data", "val_fraction", "batch_size", "seed",
               "max_train_examples", "drop_duplicates", "max_tokens", "init_from", "lora",
               "adapters_from")  # fmt: skip


def resume_keys(ft: FinetuneConfig) -> tuple[str, ...]:
  """RESUME_KEYS, each field of the task's config, and the column mapping (not `lora` when
  adapters_from sets it: the same adapters give the same settings)."""
  keys = [k for k in RESUME_KEYS if not (k == "lora" and ft.adapters_from)]
  keys += ["prune"] if ft.prune.method else []  # its masks are in the optimizer state
  keys += ["distill"] if ft.distill.teacher else []  # the teacher the student learns from
  return (*keys, *(f"task.{f.name}" for f in dataclasses.fields(ft.task)), "columns")


def check_resume(meta: dict, ft: FinetuneConfig, directory) -> None:
  if meta.get("kind") != "finetune":
    raise CheckpointMismatchError(
      f"{directory} holds a {meta.get('kind', 'pretraining')} checkpoint, not a fine-tuning run; "
      "use a fresh --workdir (point init_from at the pretraining workdir)"
    )
  keys = resume_keys(ft)
  # Recorded since 2026-12; older checkpoints: from their saved config.
  saved = meta.get("resume_keys") or setting_values(from_saved(meta.get("config") or {}), keys)
  keys = (*(k for k in ("prune", "distill") if k in saved and k not in keys), *keys)
  check_same_settings(saved, ft, keys, directory, "settings")


def training_rows(
  task,
  examples: list[dict],
  batch_size: int,
  seed: int,
  max_width: int,
  row_multiple: int = 1,
  microbatches: int = 1,
):
  """The batches the loop trains on: shuffled examples, `task.group` of them packed into each
  row when the task packs (SFT, seq2seq with task.pack), padded by length; or laid out by the
  task (padding-free classification: rows a multiple of `row_multiple`, for `microbatches`)."""
  row = (lambda of_row, rng: task.pack(of_row)) if task.group > 1 else (lambda e, rng: e)
  collate = task.train_collate(row_multiple, microbatches) or pipeline.pad_collate(
    task.pad_values, max_width=max_width
  )
  return pipeline.batches(examples, row, batch_size, seed, group=task.group, collate=collate)


def _steps_for_epochs(ft: FinetuneConfig, n_train: int) -> FinetuneConfig:
  if ft.num_epochs <= 0:
    return ft
  steps = max(1, math.ceil(ft.num_epochs * n_train / ft.batch_size))
  log.info("num_epochs=%g over %d examples: %d steps", ft.num_epochs, n_train, steps)
  return dataclasses.replace(ft, num_train_steps=steps)


@dataclasses.dataclass
class Prepared:
  """What a run trains on, up to its model: `ft` with its steps (num_epochs) and LoRA
  settings (adapters_from) resolved, the bound task and backbone, the cleaned records."""

  ft: FinetuneConfig
  task: object
  family: str
  tokenizer: object
  model_config: object
  pretrained: object  # transfer.Pretrained, or None (fresh, or resumed whole)
  examples: list[dict]  # the training examples
  dev_records: list[dict]
  # {flattened path: array} replacing the init: adapters_from's adapters, or a student's
  # blocks from its teacher (distill.student_layers)
  overrides: dict
  teacher: object = None  # the fine-tuned Model a distilled run learns from


def prepare(ft: FinetuneConfig, meta: dict | None, mesh, records=None) -> Prepared:
  """Reads and cleans the records (or takes `records`: (train, dev)), takes the backbone
  (of the run being resumed, whose `meta` is given, of init_from, or fresh) and binds the
  task to it."""
  cls = task_class(ft.task_name)
  teacher = _teacher(ft.distill, mesh) if ft.distill.teacher else None
  if ft.distill.student_layers:  # its depth is distill's (a teacher's model block may say 12)
    model = {k: v for k, v in ft.model_overrides.items() if k != "num_layers"}
    ft = dataclasses.replace(ft, model_overrides=model)
  train_records, dev_records = records or read_records(ft)
  family, tokenizer, model_config, labels, pretrained = _backbone(
    ft, cls, meta, train_records, mesh, teacher
  )
  task = cls(ft.task, ft.columns, registry.family_of(family), model_config, tokenizer, labels)
  task.check()
  overrides = {}
  if teacher is not None:
    distill.check_pair(task, tokenizer, labels, teacher, ft.distill)
    if ft.distill.student_layers:
      overrides = distill.student_init(
        teacher.params, teacher.model_config.num_layers, ft.distill.student_layers
      )
  validation.check_lengths(model_config, {"task.max_len": getattr(task.config, "max_len", 0)})
  train_records = clean(task, train_records, ft, "train")
  dev_records = clean(task, dev_records, ft, "dev")
  if hasattr(task, "set_balanced_weights"):
    task.set_balanced_weights(train_records)
  examples = [e for r in train_records for e in task.examples(r)]
  if ft.max_tokens:
    examples = [e for e in examples if task.tokens_per_example(e) <= ft.max_tokens]
  ft = _steps_for_epochs(ft, math.ceil(len(examples) / task.group))  # rows per epoch
  if ft.prune.method:  # the best checkpoint is one at the final sparsity
    prune = ft.prune.resolved(ft.num_train_steps)
    stop = ft.early_stopping
    stop = dataclasses.replace(stop, start_step=max(stop.start_step, prune.end_step))
    ft = dataclasses.replace(ft, prune=prune, early_stopping=stop)
  if ft.adapters_from:  # peft's adapters: their settings, and the arrays to start from
    ft, overrides = _peft_adapters(ft, task, family, model_config, tokenizer)
  return Prepared(ft, task, family, tokenizer, model_config, pretrained, examples, dev_records,
                  overrides, teacher)  # fmt: skip


def train(
  ft: FinetuneConfig,
  workdir,
  config_json: dict | None = None,
  records: tuple[list[dict], list[dict]] | None = None,
  after_eval=None,
) -> dict:
  """Fine-tunes (resuming from `workdir` if it holds a run), then evaluates the best
  checkpoint on the dev set. Returns its metrics with 'step', 'interrupted', 'best', and the
  trained 'model'. `records` (train, dev) replace reading the config's data (k-fold);
  `after_eval(step, metrics)` returning True ends the run there ('pruned', no final pass)."""
  workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
  check(ft, workdir)
  lock = WorkdirLock(workdir)
  if jax.process_index() == 0:
    lock.acquire()
  ckpt = Checkpointer(workdir.checkpoints, keep=ft.keep_checkpoints, save_every=1)
  try:
    mesh = validation.make_mesh(ft.mesh)
    meta = ckpt.restore_meta()
    if meta:
      check_resume(meta, ft, ckpt.directory)
    p = prepare(ft, meta, mesh, records)
    ft, task, family, tokenizer, model_config = p.ft, p.task, p.family, p.tokenizer, p.model_config
    pretrained, examples, dev_records = p.pretrained, p.examples, p.dev_records
    trainable = build(task, family, model_config, ft, mesh, p.teacher)
    restored = ckpt.restore(frozen_base.abstract(trainable, meta)) if meta else None
    overrides = None
    if pretrained is not None:
      overrides = transfer.backbone_overrides(
        trainable.abstract_state.params, pretrained, task.layout
      )
    overrides = {**(overrides or {}), **p.overrides}
    if p.teacher is not None and ft.distill.in_step:
      overrides.update(distill.teacher_overrides(p.teacher))
    overrides = overrides or None
    initial_state = lambda: trainable.init_state(ft.seed, overrides)
    base = None
    # LoRA, distillation: checkpoints name the frozen base / teacher instead (frozen_base)
    base_key, source = (
      ("teacher", ft.distill.teacher) if ft.distill.in_step else ("base", ft.init_from)
    )
    if not trainable.saves_frozen:
      first = initial_state()
      base = frozen_base.record(trainable, first.params, source, ft.seed)
      if restored:
        restored = frozen_base.completed(trainable, restored, first.params, base)
      initial_state = lambda: first
    max_width = getattr(task.config, "max_len", 0)
    dev = evaluation.eval_set(task, dev_records, ft.eval_batch_size, max_width)
    in_loop = evaluation.Remembered(task, trainable, dev)
    ft_json = config_json or {}
    job_meta = _meta(task, tokenizer, family, model_config, ft, ft_json) | {base_key: base}
    mean_tokens = float(np.mean([task.tokens_per_example(e) for e in examples]))
    dp = sharding.data_parallel_size(mesh)
    job = loop.Job(
      trainable=trainable,
      dataset=training_rows(
        task, examples, ft.batch_size, ft.seed, max_width, dp, ft.step.accum_steps
      ),
      evaluate=lambda params: evaluation.scalars(in_loop.evaluate(params)),
      meta=lambda: job_meta,
      initial_state=initial_state,
      tokens_per_step=int(ft.batch_size * mean_tokens) if task.reports_tokens else 0,
      examples_per_step=ft.batch_size * task.group,  # a packed row holds task.group examples
      after_eval=after_eval,
    )
    reporting.log_task_model(trainable, family, len(examples), len(dev_records))
    result = loop.run(job, ft.loop, workdir, ckpt, restored)
  finally:
    ckpt.close()
    lock.release()
  out = {"step": result.step, "interrupted": result.interrupted, "best": result.best,
         "pruned": result.pruned}  # fmt: skip
  if result.interrupted or result.pruned:
    return out | {k: v for k, v in result.metrics.items() if k.startswith("eval_")}
  params = result.state.params
  best = functools.cache(lambda: _best_params(trainable, workdir, result))  # read once, if at all
  final = in_loop.last if in_loop.scored_final(result) else None
  if final is None:  # a fresh pass over the best params
    final = evaluation.evaluate(task, trainable, best(), dev, generate=True)
  name = "dev" if records else reporting.data_name(ft.eval_data or ft.train_data)
  if ft.prune.method:  # the zeros the best checkpoint holds, per kernel
    final = final | {"sparsity": _sparsity(workdir, best(), result.state.opt_state)}
  reporting.write_eval_report(workdir, name, final, task.labels)
  if jax.process_index() == 0:
    reporting.plot_learning_curve(workdir, task.metric_for(task.config))
  out.update(final)
  if not trainable.saves_frozen and ft.distill.in_step:  # the student alone, as load gives it
    params = trainable.saved_params(params)
    trainable = build(task, family, model_config, ft, trainable.mesh)
  model = Model(task, trainable, tokenizer, family, model_config, params, ft.lora, ft.init_from)
  out.update(model=model)
  return out


def _backbone(ft: FinetuneConfig, cls, meta: dict | None, train_records: list[dict], mesh,
              teacher=None):  # fmt: skip
  """Where the model comes from: (family, tokenizer, model config, labels, the pretrained
  weights or None) of the run being resumed, of the `teacher` cut to distill.student_layers,
  of `init_from`, or fresh (a tokenizer trained on the training records)."""
  if meta:  # resuming: the model, tokenizer and labels of the saved run
    family, tokenizer = meta["model_family"], tokenizers.tokenizer_from_json(meta["tokenizer"])
    base = registry.model_config(family, meta["model"])
    # a LoRA run's base is loaded again: its checkpoints name it (frozen_base), and a run saved
    # whole before they did records its fingerprint from here on
    pretrained = None
    if (meta.get("base") or ft.lora.rank) and ft.init_from:
      pretrained = transfer.load(ft.init_from, mesh, ft.init_from_command)
    return family, tokenizer, _model_config(ft, base, 0, 0), meta["task"]["labels"], pretrained
  if ft.distill.student_layers:  # the teacher's architecture, tokenizer and labels
    config = distill.student_config(teacher, ft.distill.student_layers)
    labels = teacher.task.labels
    return teacher.family, teacher.tokenizer, _model_config(ft, config, 0, 0), labels, None
  labels = cls.fit_labels(ft.task, ft.columns, train_records)
  if ft.init_from:
    pretrained = transfer.load(ft.init_from, mesh, ft.init_from_command)
    model_config = _model_config(ft, pretrained.model_config, 0, 0)
    return pretrained.family, pretrained.tokenizer, model_config, labels, pretrained
  family = ft.model_family
  draft = cls(ft.task, ft.columns, registry.family_of(family), None, None, labels)
  texts = texts_for_tokenizer(draft, train_records)
  tokenizer = corpus.same_on_every_host(tokenizers.train_tokenizer(ft.tokenizer, texts))
  chars = getattr(tokenizer, "num_chars", 0)
  return family, tokenizer, _model_config(ft, None, tokenizer.vocab_size, chars), labels, None


def _teacher(c, mesh) -> Model:
  """distill.teacher's fine-tuned model, or a one-line error naming the command that makes it."""
  if finetuned.workdir_kind(c.teacher) != "finetune":
    hint = f"; create it with: {c.teacher_command}" if c.teacher_command else ""
    raise DataNotFoundError(
      f"distill.teacher={c.teacher!r} holds no fine-tuned model (a finetune.py workdir){hint}"
    )
  return finetuned.load(c.teacher, mesh)


def _peft_adapters(ft: FinetuneConfig, task, family: str, model_config, tokenizer):
  """(ft with adapters_from's LoRA settings, {path: array} of its adapters and saved modules)."""
  from flaxlm.convert import peft, tree

  bare = task.model(registry.build_model(family, model_config))
  shapes = {k: v.shape for k, v in tree.abstract_params(bare).items()}
  source = ft.adapters_from[len("hf:") :]
  config, arrays = peft.read_adapters(
    source, family, model_config, shapes, tokenizer, task.layout.head
  )
  log.info("adapters_from %s: rank %d on %d projections", source, config.rank,
           sum(k[-1].endswith("_lora_a") for k in arrays))  # fmt: skip
  return dataclasses.replace(ft, lora=config), arrays


def _sparsity(workdir, params, opt_state) -> float:
  """Writes sparsity.json (the share of zeros of every kernel `opt_state` masks, in the best
  checkpoint's `params`) and returns the total."""
  report = pruning.report(params, pruning.pruned_paths(opt_state))
  if jax.process_index() == 0:
    (workdir.path / "sparsity.json").write_text(json.dumps(report, indent=1) + "\n")
  log.info("sparsity %.4f over %d pruned weights (per kernel: %s)", report["total"],
           report["parameters"], workdir.path / "sparsity.json")  # fmt: skip
  return report["total"]


def _best_params(trainable, workdir, result):
  """The best checkpoint's parameters: the run's last ones when it is the last step (or no
  best checkpoint is kept), else read back from best/."""
  if result.best is None or result.best.get("step") == result.step:
    return result.state.params
  best = frozen_base.restore_params(workdir.best, trainable, lambda meta: result.state.params)
  return best[0] if best is not None else result.state.params
