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
import logging
import math

import jax
import numpy as np

from flaxlm.config import check_same_settings, setting_values
from flaxlm.config.finetuning import FinetuneConfig, from_saved
from flaxlm.data import corpus, pipeline, tokenizers
from flaxlm.errors import CheckpointMismatchError, ConfigError
from flaxlm.finetuning import evaluation, frozen_base
from flaxlm.finetuning.inputs import check, clean, read_records, texts_for_tokenizer  # noqa: F401
from flaxlm.models import registry
from flaxlm.nn import lora, sharding
from flaxlm.nn.lora import LoraConfig
from flaxlm.pretraining import transfer
from flaxlm.tasks import task_class
from flaxlm.train import loop, reporting, validation
from flaxlm.train.checkpoint import Checkpointer
from flaxlm.train.steps import ModelInit, Trainable
from flaxlm.workdir import Workdir, WorkdirLock

log = logging.getLogger("flaxlm")


@dataclasses.dataclass
class Model:
  """A task model ready to train or predict: what `flaxlm.load` returns."""

  task: object  # flaxlm.tasks.Task, bound to its labels and tokenizer
  trainable: Trainable
  tokenizer: object
  family: str
  model_config: object
  params: object = None
  lora: LoraConfig = LoraConfig()  # rank > 0: `params` hold adapters (lora.merged folds them)
  init_from: str = ""  # the base it was fine-tuned from

  @property
  def model(self):
    return self.trainable.model


# --- model ------------------------------------------------------------------------------------


def build(task, family: str, model_config, ft: FinetuneConfig, mesh) -> Trainable:
  model = task.model(registry.build_model(family, model_config))
  frozen = task.layout.frozen if ft.freeze_backbone else None
  example = task.init_batch(sharding.data_parallel_size(mesh))
  if ft.lora.rank:  # the base frozen: only adapters and the saved modules train
    frozen = lora.frozen(ft.lora, task.layout.is_head)
    shapes = None
    if ft.lora.quantize_base:  # QLoRA groups 4-bit scales by each kernel's input rows
      shapes = jax.eval_shape(ModelInit(model, tuple(example)), jax.random.PRNGKey(0))
      shapes = sharding.strip_axes(shapes)
    model = lora.with_adapters(model, ft.lora, shapes, lambda path: not frozen(path))
  trainable = Trainable.with_adamw(
    model,
    ft.optim,
    mesh,
    sharding.rules_from_config(ft.logical_axis_rules),
    task.loss,
    ft.step,
    ModelInit(model, tuple(example)),
    frozen=frozen,
    saves_frozen=not ft.lora.rank,  # a LoRA checkpoint names its base (frozen_base)
  )
  if ft.lora.rank:
    lora.check_targets(trainable.abstract_state.params, ft.lora)
  elif ft.freeze_backbone:
    task.layout.check_freezable(trainable.abstract_state.params, task.name, family)
  validation.check_divisible(trainable)
  return trainable


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
  adapters: dict  # {flattened path: array} of adapters_from's adapters


def prepare(ft: FinetuneConfig, meta: dict | None, mesh, records=None) -> Prepared:
  """Reads and cleans the records (or takes `records`: (train, dev)), takes the backbone
  (of the run being resumed, whose `meta` is given, of init_from, or fresh) and binds the
  task to it."""
  cls = task_class(ft.task_name)
  train_records, dev_records = records or read_records(ft)
  family, tokenizer, model_config, labels, pretrained = _backbone(
    ft, cls, meta, train_records, mesh
  )
  task = cls(ft.task, ft.columns, registry.family_of(family), model_config, tokenizer, labels)
  task.check()
  validation.check_lengths(model_config, {"task.max_len": getattr(task.config, "max_len", 0)})
  train_records = clean(task, train_records, ft, "train")
  dev_records = clean(task, dev_records, ft, "dev")
  if hasattr(task, "set_balanced_weights"):
    task.set_balanced_weights(train_records)
  examples = [e for r in train_records for e in task.examples(r)]
  if ft.max_tokens:
    examples = [e for e in examples if task.tokens_per_example(e) <= ft.max_tokens]
  ft = _steps_for_epochs(ft, math.ceil(len(examples) / task.group))  # rows per epoch
  adapters = {}
  if ft.adapters_from:  # peft's adapters: their settings, and the arrays to start from
    ft, adapters = _peft_adapters(ft, task, family, model_config, tokenizer)
  return Prepared(ft, task, family, tokenizer, model_config, pretrained, examples, dev_records,
                  adapters)  # fmt: skip


def train(
  ft: FinetuneConfig,
  workdir,
  config_json: dict | None = None,
  records: tuple[list[dict], list[dict]] | None = None,
) -> dict:
  """Fine-tunes (resuming from `workdir` if it holds a run), then evaluates the best
  checkpoint on the dev set. Returns its metrics with 'step', 'interrupted', 'best', and the
  trained 'model'. `records` (train, dev) replace reading the config's data (k-fold)."""
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
    trainable = build(task, family, model_config, ft, mesh)
    restored = ckpt.restore(frozen_base.abstract(trainable, meta)) if meta else None
    overrides = None
    if pretrained is not None:
      overrides = transfer.backbone_overrides(
        trainable.abstract_state.params, pretrained, task.layout
      )
    overrides = {**(overrides or {}), **p.adapters} or None
    initial_state = lambda: trainable.init_state(ft.seed, overrides)
    base = None
    if not trainable.saves_frozen:  # LoRA: checkpoints name the base instead (frozen_base)
      first = initial_state()
      base = frozen_base.record(trainable, first.params, ft.init_from, ft.seed)
      if restored:
        restored = frozen_base.completed(trainable, restored, first.params, base)
      initial_state = lambda: first
    max_width = getattr(task.config, "max_len", 0)
    dev = evaluation.eval_set(task, dev_records, ft.eval_batch_size, max_width)
    in_loop = evaluation.Remembered(task, trainable, dev)
    ft_json = config_json or {}
    job_meta = _meta(task, tokenizer, family, model_config, ft, ft_json) | {"base": base}
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
    )
    reporting.log_task_model(trainable, family, len(examples), len(dev_records))
    result = loop.run(job, ft.loop, workdir, ckpt, restored)
  finally:
    ckpt.close()
    lock.release()
  out = {"step": result.step, "interrupted": result.interrupted, "best": result.best}
  if result.interrupted:
    return out
  params = result.state.params
  final = _final_evaluation(task, trainable, workdir, result, in_loop, dev)
  name = "dev" if records else reporting.data_name(ft.eval_data or ft.train_data)
  reporting.write_eval_report(workdir, name, final, task.labels)
  if jax.process_index() == 0:
    reporting.plot_learning_curve(workdir, task.metric_for(task.config))
  out.update(final)
  model = Model(task, trainable, tokenizer, family, model_config, params, ft.lora, ft.init_from)
  out.update(model=model)
  return out


def _backbone(ft: FinetuneConfig, cls, meta: dict | None, train_records: list[dict], mesh):
  """Where the model comes from: (family, tokenizer, model config, labels, the pretrained
  weights or None) of the run being resumed, of `init_from`, or fresh (a tokenizer trained
  on the training records)."""
  if meta:  # resuming: the model, tokenizer and labels of the saved run
    family, tokenizer = meta["model_family"], tokenizers.tokenizer_from_json(meta["tokenizer"])
    base = registry.model_config(family, meta["model"])
    # a LoRA run's base is loaded again: its checkpoints name it (frozen_base), and a run saved
    # whole before they did records its fingerprint from here on
    pretrained = None
    if (meta.get("base") or ft.lora.rank) and ft.init_from:
      pretrained = transfer.load(ft.init_from, mesh, ft.init_from_command)
    return family, tokenizer, _model_config(ft, base, 0, 0), meta["task"]["labels"], pretrained
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


def _final_evaluation(task, trainable, workdir, result, in_loop, dev) -> dict:
  """The best checkpoint's dev metrics: the last in-loop evaluation when it scored the
  params the run ends with (text included), else a fresh pass over the best params."""
  if in_loop.scored_final(result):
    return in_loop.last
  best = frozen_base.restore_params(workdir.best, trainable, lambda meta: result.state.params)
  params = best[0] if best is not None else result.state.params
  return evaluation.evaluate(task, trainable, params, dev, generate=True)
