"""The fine-tuning run configuration: defaults for every key `finetune.py` understands, and
the frozen `FinetuneConfig` the library takes.

It shares the optimization, reporting and sharding keys of pretraining
(`config.add_training_keys`) and adds the task block (validated against the task's config
class, as the model block is against the family's), the data and column mapping, where the
backbone comes from (`init_from`) and how it trains (frozen, layer-wise decay, early stopping).
"""

from __future__ import annotations

import dataclasses

import ml_collections
from ml_collections import config_dict

from flaxlm.config import (
  EarlyStopping,
  LoopConfig,
  TrainingKeys,
  add_training_keys,
  check_keys,
  loop_config,
  merged_config,
  model_preset,
  training_keys,
)
from flaxlm.data.tokenizer_config import TokenizerConfig
from flaxlm.errors import ConfigError
from flaxlm.models import registry
from flaxlm.tasks import TASKS, Columns, config_from_block, task_class


def task_block(name: str) -> ml_collections.ConfigDict:
  """The `config.task` block of a task with its defaults, e.g. task_block('classification')."""
  return ml_collections.ConfigDict({"name": name, **dataclasses.asdict(task_class(name).Config())})


def runtime_model_block() -> ml_collections.ConfigDict:
  """The model block of a run whose architecture comes from `init_from`: only the keys that
  may differ from the checkpoint, unset unless given."""
  return ml_collections.ConfigDict(
    {
      "dropout_rate": config_dict.placeholder(float),
      "dtype": config_dict.placeholder(str),
      "remat_policy": config_dict.placeholder(str),
      "attention_impl": config_dict.placeholder(str),
    }
  )


def finetune_config() -> ml_collections.ConfigDict:
  """Every key a fine-tuning run understands, with its default. Config files start here."""
  c = ml_collections.ConfigDict()
  # The backbone: a flaxlm pretraining workdir (its newest checkpoint: architecture, weights
  # and tokenizer), or '' to train from scratch with model_family / model / tokenizer below.
  c.init_from = ""
  c.init_from_command = ""  # the command that creates init_from (printed when it is missing)
  c.model_family = "bert"
  c.model = runtime_model_block()
  c.tokenizer = ml_collections.ConfigDict(dataclasses.asdict(TokenizerConfig()))
  c.freeze_backbone = False  # train the head only (the backbone gets no gradient or state)

  c.task = task_block("classification")
  c.train_data = ""  # tsv:/csv:/jsonl:/conll:/squad:<path> or tfds:<name>[:split]
  c.eval_data = ""  # the dev set; '' = hold out val_fraction of train_data
  c.val_fraction = 0.1
  c.columns = ml_collections.ConfigDict(Columns.defaults(TASKS.values()))
  c.max_train_examples = 0  # 0 = all
  c.max_eval_examples = 0  # 0 = all (the first N dev records: a quicker, rougher dev metric)
  c.drop_duplicates = True  # identical inputs (after the column mapping) kept once
  c.max_tokens = 0  # > 0: drop training examples longer than this instead of truncating

  add_training_keys(c)
  c.num_train_steps = 1000
  c.num_epochs = 0.0  # > 0: num_train_steps = ceil(epochs x training examples / batch_size)
  c.learning_rate = 5e-5
  c.schedule = "linear"
  c.warmup_steps = 100
  c.min_learning_rate = 0.0
  c.weight_decay = 0.01
  c.b2 = 0.999
  c.eval_every = 200
  c.checkpoint_every = 200
  c.keep_checkpoints = 2
  # Keep the best checkpoint on a dev metric ('' = the task's own, e.g. eval_accuracy) and
  # stop after `patience` evaluations without improvement (0 = train to the end).
  c.early_stopping = ml_collections.ConfigDict({"metric": "", "mode": "", "patience": 0})
  c.kfold = 0  # > 1: cross-validation over train_data (see flaxlm.finetuning.cross_validate)
  return c


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(TrainingKeys):
  init_from: str
  init_from_command: str  # how to create init_from (printed when it is missing)
  model_family: str
  model_overrides: dict  # the model block's set keys (a full model config without init_from)
  tokenizer: TokenizerConfig
  freeze_backbone: bool
  task_name: str
  task: object  # the task's config dataclass
  train_data: str
  eval_data: str
  val_fraction: float
  columns: Columns
  max_train_examples: int
  max_eval_examples: int
  drop_duplicates: bool
  max_tokens: int
  num_epochs: float
  early_stopping: EarlyStopping
  kfold: int
  pad_vocab_to: int = 128

  @property
  def loop(self) -> LoopConfig:
    return loop_config(self, self.early_stopping)


def from_config_dict(c: ml_collections.ConfigDict) -> FinetuneConfig:
  check_keys(c, finetune_config())
  task_fields = c.task.to_dict()
  cls = task_class(task_fields.get("name", ""))
  task = config_from_block(cls, task_fields)
  overrides = {k: v for k, v in c.model.to_dict().items() if v is not None}
  if not c.init_from:
    registry.model_config(c.model_family, overrides)  # names bad keys now
  stop = c.early_stopping
  if stop.mode not in ("", "max", "min"):
    raise ConfigError(f"early_stopping.mode={stop.mode!r}; choose 'max' or 'min' ('' = the task's)")
  metric = stop.metric or cls.metric_for(task)
  if not metric.startswith("eval_"):
    metric = "eval_" + metric
  reported = ["eval_" + name for name in cls.metric_names(task)]
  if metric not in reported:
    raise ConfigError(
      f"early_stopping.metric={stop.metric!r}: task {cls.name!r} does not report it; use one "
      f"of {reported} ('' = the task's own, {cls.metric_for(task)})"
    )
  return FinetuneConfig(
    init_from=c.init_from,
    init_from_command=c.init_from_command,
    model_family=c.model_family,
    model_overrides=overrides,
    tokenizer=TokenizerConfig(**c.tokenizer.to_dict()),
    freeze_backbone=c.freeze_backbone,
    task_name=cls.name,
    task=task,
    train_data=c.train_data,
    eval_data=c.eval_data,
    val_fraction=c.val_fraction,
    columns=Columns.of(c.columns.to_dict()),
    max_train_examples=c.max_train_examples,
    max_eval_examples=c.max_eval_examples,
    drop_duplicates=c.drop_duplicates,
    max_tokens=c.max_tokens,
    **training_keys(c),
    num_epochs=c.num_epochs,
    early_stopping=EarlyStopping(
      metric=metric, mode=stop.mode or cls.metric_mode_for(task), patience=stop.patience
    ),
    kfold=c.kfold,
  )


def from_saved(saved: dict) -> FinetuneConfig:
  """The FinetuneConfig of a checkpoint's saved config (`config.merged_config`)."""
  return from_config_dict(merged_config(finetune_config(), saved))


def with_model_preset(c: ml_collections.ConfigDict, family: str, preset: str) -> None:
  """Sets a from-scratch run's family and full model block from a preset."""
  c.model_family = family
  c.model = model_preset(family, preset)
