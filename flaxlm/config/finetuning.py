"""The fine-tuning run configuration: defaults for every key `finetune.py` understands, and
the frozen `FinetuneConfig` the library takes.

It shares the optimization, reporting and sharding keys of pretraining
(`config.TrainingKeys`) and adds the task block (validated against the task's config
class, as the model block is against the family's), the data and column mapping, where the
backbone comes from (`init_from`) and how it trains (frozen, layer-wise decay, early stopping).
"""

from __future__ import annotations

import dataclasses

import ml_collections
from ml_collections import config_dict

from flaxlm.config import (
  EarlyStopping,
  TrainingKeys,
  check_keys,
  merged_config,
  model_preset,
  read_keys,
  write_keys,
)
from flaxlm.data.tokenizers.config import TokenizerConfig
from flaxlm.errors import ConfigError
from flaxlm.models import registry
from flaxlm.nn.lora import LoraConfig
from flaxlm.nn.pruning import PruneConfig
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


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  teacher: str = ""  # a fine-tuned workdir of the same task; '' = no distillation
  teacher_command: str = ""  # the command that creates it (printed when it is missing)
  temperature: float = 2.0  # T: softens both distributions; the soft term is scaled by T^2
  # The soft term's weight; 1 - alpha the task loss's (0: no teacher in the step).
  alpha: float = 0.5
  # > 0: the student is the teacher with this many blocks, from its layers k-1, 2k-1, ...
  # (k = teacher layers / student_layers); 0: the run's own init_from or fresh model.
  student_layers: int = 0
  # > 0: adds this weight x the mean squared difference between each student block's output
  # and the teacher block it maps to (k-1, 2k-1, ...), over real tokens (TinyBERT's hidden
  # state transfer); needs equal widths and unscanned blocks.
  hidden_weight: float = 0.0

  def __post_init__(self):
    if self.temperature <= 0:
      raise ConfigError(f"distill.temperature={self.temperature}; use a positive value such as 2")
    if not 0.0 <= self.alpha <= 1.0:
      raise ConfigError(f"distill.alpha={self.alpha} must be in [0, 1] (the soft term's weight)")
    if self.student_layers < 0:
      raise ConfigError(f"distill.student_layers={self.student_layers}; use 0 or a block count")
    if self.hidden_weight < 0:
      raise ConfigError(f"distill.hidden_weight={self.hidden_weight}; use 0 (off) or a weight")
    if self.student_layers and not self.teacher:
      raise ConfigError("distill.student_layers takes a teacher's blocks: set distill.teacher")

  @property
  def in_step(self) -> bool:
    """Whether the teacher runs in the train step (alpha 0 only initializes from it)."""
    return bool(self.teacher) and self.alpha > 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneKeys(TrainingKeys):
  """Fine-tuning's own keys, and the shared ones whose default differs for fine-tuning."""

  # The backbone: a flaxlm pretraining workdir (its newest checkpoint: architecture, weights
  # and tokenizer), or '' to train from scratch with model_family / model / tokenizer below.
  init_from: str = ""
  init_from_command: str = ""  # the command that creates init_from (printed when it is missing)
  model_family: str = "bert"
  freeze_backbone: bool = False  # train the head only (the backbone gets no gradient or state)
  # 'hf:<dir>': Hugging Face peft LoRA adapters (adapter_config.json + adapter_model.safetensors)
  # to start from, on init_from's base; their rank, alpha and targets replace lora.*.
  adapters_from: str = ""

  train_data: str = ""  # tsv:/csv:/jsonl:/conll:/squad:<path> or tfds:<name>[:split]
  eval_data: str = ""  # the dev set; '' = hold out val_fraction of train_data
  val_fraction: float = 0.1
  max_train_examples: int = 0  # 0 = all
  max_eval_examples: int = 0  # 0 = all (the first N dev records: a quicker, rougher dev metric)
  drop_duplicates: bool = True  # identical inputs (after the column mapping) kept once
  max_tokens: int = 0  # > 0: drop training examples longer than this instead of truncating

  num_epochs: float = 0.0  # > 0: num_train_steps = ceil(epochs x training examples / batch_size)
  learning_rate: float = 5e-5
  schedule: str = "linear"
  min_learning_rate: float = 0.0
  weight_decay: float = 0.01
  b2: float = 0.999
  eval_every: int = 200
  checkpoint_every: int = 200
  keep_checkpoints: int = 2
  kfold: int = 0  # > 1: cross-validation over train_data (see flaxlm.finetuning.kfold)


def finetune_config() -> ml_collections.ConfigDict:
  """Every key a fine-tuning run understands, with its default. Config files start here."""
  c = ml_collections.ConfigDict()
  write_keys(c, FinetuneKeys)
  c.model = runtime_model_block()
  c.tokenizer = ml_collections.ConfigDict(dataclasses.asdict(TokenizerConfig()))
  c.task = task_block("classification")
  c.columns = ml_collections.ConfigDict(Columns.defaults(TASKS.values()))
  # Keep the best checkpoint on a dev metric ('' = the task's own, e.g. eval_accuracy) and
  # stop after `patience` evaluations without improvement (0 = train to the end).
  c.early_stopping = ml_collections.ConfigDict(
    {"metric": "", "mode": "", "patience": 0, "start_step": 0}
  )
  # LoRA (rank > 0): low-rank adapters on the projections `targets` matches; the base stays
  # frozen, only adapters and `modules_to_save` (the task head) train. See flaxlm/nn/lora.py.
  c.lora = ml_collections.ConfigDict(dataclasses.asdict(LoraConfig()))
  # Pruning (method set): masks over the backbone's weight matrices, tightened on a schedule
  # while the model fine-tunes. See flaxlm/nn/pruning.py.
  c.prune = ml_collections.ConfigDict(dataclasses.asdict(PruneConfig()))
  # Distillation (teacher set): the student fine-tunes against a fine-tuned teacher's class
  # distributions. See flaxlm/finetuning/distill.py.
  c.distill = ml_collections.ConfigDict(dataclasses.asdict(DistillConfig()))
  return c


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneConfig(FinetuneKeys):
  """Everything `finetuning.train` needs: the keys, and the blocks that belong to a class."""

  model_overrides: dict  # the model block's set keys (a full model config without init_from)
  tokenizer: TokenizerConfig
  task_name: str
  task: object  # the task's config dataclass
  columns: Columns
  early_stopping: EarlyStopping
  lora: LoraConfig = LoraConfig()
  prune: PruneConfig = PruneConfig()
  distill: DistillConfig = DistillConfig()
  pad_vocab_to: int = 128


def from_config_dict(c: ml_collections.ConfigDict) -> FinetuneConfig:
  check_keys(c, finetune_config())
  task_fields = c.task.to_dict()
  cls = task_class(task_fields.get("name", ""))
  task = config_from_block(cls, task_fields)
  overrides = {k: v for k, v in c.model.to_dict().items() if v is not None}
  if not c.init_from:
    registry.model_config(c.model_family, overrides)  # names bad keys now
  if c.adapters_from and not c.adapters_from.startswith("hf:"):
    raise ConfigError(f"adapters_from={c.adapters_from!r}; name a peft folder as hf:<dir>")
  if c.adapters_from and c.lora.rank:
    raise ConfigError(
      "adapters_from sets the LoRA settings from its adapter_config.json; leave lora.rank at 0"
    )
  prune = PruneConfig(**c.prune.to_dict())
  if prune.method and (c.lora.rank or c.adapters_from or c.freeze_backbone):
    raise ConfigError(
      "prune.method prunes the weights being fine-tuned; LoRA (lora.rank, adapters_from) and "
      "freeze_backbone keep them frozen: use one or the other"
    )
  distill = DistillConfig(**c.distill.to_dict())
  if distill.teacher and (c.lora.rank or c.adapters_from):
    raise ConfigError("distill.teacher trains a whole student; LoRA (lora.rank, adapters_from) "
                      "is not offered with it yet: use one or the other")  # fmt: skip
  if distill.student_layers and c.init_from:
    raise ConfigError(
      f"distill.student_layers takes the student from the teacher's blocks; init_from="
      f"{c.init_from!r} would give it another: set one of them"
    )
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
    **read_keys(c, FinetuneKeys),
    model_overrides=overrides,
    tokenizer=TokenizerConfig(**c.tokenizer.to_dict()),
    task_name=cls.name,
    task=task,
    columns=Columns.of(c.columns.to_dict()),
    early_stopping=EarlyStopping(
      metric=metric,
      mode=stop.mode or cls.metric_mode_for(task),
      patience=stop.patience,
      start_step=stop.start_step,
    ),
    lora=LoraConfig(**c.lora.to_dict()),
    prune=prune,
    distill=distill,
  )


def from_saved(saved: dict) -> FinetuneConfig:
  """The FinetuneConfig of a checkpoint's saved config (`config.merged_config`)."""
  return from_config_dict(merged_config(finetune_config(), saved))


def with_model_preset(c: ml_collections.ConfigDict, family: str, preset: str) -> None:
  """Sets a from-scratch run's family and full model block from a preset."""
  c.model_family = family
  c.model = model_preset(family, preset)
