"""The run configuration: defaults for every key, and the one place a `ConfigDict` from
`configs/*.py` becomes the frozen dataclasses the library takes.

Keys use the run vocabulary shared by every config and log (STYLE.md): num_train_steps,
batch_size, learning_rate, warmup_steps, log_every, eval_every, checkpoint_every, seed,
dataset, mesh.
"""

from __future__ import annotations

import dataclasses
import difflib
import json

import ml_collections

from flaxlm import objectives
from flaxlm.data.spec import DataConfig
from flaxlm.data.tokenizers.config import TokenizerConfig
from flaxlm.errors import CheckpointMismatchError, ConfigError
from flaxlm.models import registry
from flaxlm.nn.losses import LossConfig
from flaxlm.objectives import MaskingConfig, SpanCorruptionConfig

# --- what the engine takes (plain settings: reading a config imports no loop or step code) ----


SCHEDULES = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  learning_rate: float = 1e-3
  schedule: str = "cosine"  # cosine | linear | constant
  warmup_steps: int = 100
  decay_steps: int = 1000  # steps from 0 to the end of decay (usually num_train_steps)
  min_learning_rate: float = 0.0
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  decay_embeddings: bool = False
  grad_clip_norm: float = 1.0  # 0 disables clipping
  layer_decay: float = 1.0  # < 1: lower layers learn more slowly (fine-tuning); 1 = off

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ConfigError(f"schedule={self.schedule!r}; choose one of {SCHEDULES}")
    if self.learning_rate < 0 or self.min_learning_rate < 0:
      raise ConfigError(
        f"learning_rate={self.learning_rate}, min_learning_rate={self.min_learning_rate}: "
        "learning rates must be >= 0"
      )
    if not 0 < self.layer_decay <= 1:
      raise ConfigError(f"layer_decay={self.layer_decay}; use a value in (0, 1] (1 = off)")


@dataclasses.dataclass(frozen=True)
class StepConfig:
  accum_steps: int = 1
  loss: LossConfig = LossConfig()


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
  metric: str = ""  # an eval metric (e.g. 'eval_accuracy'); '' keeps no best checkpoint
  mode: str = "max"  # max | min
  patience: int = 0  # evaluations without improvement before stopping; 0 = never stop
  # Evaluations before this step are logged but neither kept as the best nor counted for
  # patience (a pruned run's: before its masks reach their sparsity).
  start_step: int = 0


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  num_train_steps: int
  log_every: int = 50
  eval_every: int = 0  # 0: evaluate only at the end
  checkpoint_every: int = 0  # 0: save only at the end (and on a signal)
  early_stopping: EarlyStopping = EarlyStopping()
  peak_flops: float = 0.0  # per device; 0: from the device table (for MFU)


def model_preset(family: str, name: str) -> ml_collections.ConfigDict:
  """The `config.model` block of a named preset, e.g. model_preset('gpt', 'gpt2_small')."""
  presets = registry.family_of(family).presets
  if name not in presets:
    raise ConfigError(f"{family} has no preset {name!r}; presets: {sorted(presets)}")
  return ml_collections.ConfigDict(dataclasses.asdict(presets[name]))


# --- the keys: each defined once, as a field (type, default, meaning) -----------------------


def write_keys(c: ml_collections.ConfigDict, keys: type) -> None:
  """Writes the fields of a keys class into a config with their defaults."""
  for f in dataclasses.fields(keys):
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    c[f.name] = ml_collections.ConfigDict(value) if isinstance(value, dict) else (
      list(value) if isinstance(value, tuple) else value)  # fmt: skip


def read_keys(c: ml_collections.ConfigDict, keys: type) -> dict:
  """The fields of a keys class, read from a config by name and typed back."""
  out = {}
  for f in dataclasses.fields(keys):
    value = c[f.name]
    if isinstance(value, ml_collections.ConfigDict):
      value = value.to_dict()
    elif isinstance(value, list):
      value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
    out[f.name] = value
  return out


def by_name(settings: type, keys, **given):
  """A settings dataclass built from the same-named fields of a keys object: the engine's
  settings take their values from the keys, so no key is listed twice."""
  names = {f.name for f in dataclasses.fields(settings)} & {
    f.name for f in dataclasses.fields(keys)
  }
  return settings(**{n: getattr(keys, n) for n in names}, **given)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingKeys:
  """The keys pretraining and fine-tuning share: optimization, reporting, sharding."""

  # Optimization.
  num_train_steps: int = 1000
  batch_size: int = 32  # global, in sequences: batch_size * seq_len tokens per step
  accum_steps: int = 1  # microbatches per step (batch_size / accum_steps sequences each)
  learning_rate: float = 1e-3
  schedule: str = "cosine"  # cosine | linear | constant
  warmup_steps: int = 100
  min_learning_rate: float = 1e-4
  weight_decay: float = 0.1
  decay_embeddings: bool = False
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8  # Adam's epsilon
  layer_decay: float = 1.0  # < 1: layer-wise learning-rate decay (lower layers learn slower)
  grad_clip_norm: float = 1.0  # 0 disables clipping
  label_smoothing: float = 0.0
  z_loss: float = 0.0
  seed: int = 0

  # Reporting and checkpoints.
  log_every: int = 50
  eval_every: int = 250
  eval_batch_size: int = 32
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  peak_flops: float = 0.0  # per-device peak FLOP/s for MFU where the device is not in the table

  # Sharding: mesh axis sizes (-1 takes the remaining devices) and logical-axis rules
  # (() = flaxlm.nn.sharding.DEFAULT_RULES).
  mesh: dict = dataclasses.field(default_factory=lambda: {"data": -1, "fsdp": 1, "tensor": 1})
  logical_axis_rules: tuple = ()
  # CPU-only hosts: XLA devices to split the cores into (train.py; -1: one per core). Small
  # models train faster data-parallel over one device per core; see cli.use_cpu_devices.
  cpu_devices: int = 1

  def __post_init__(self):
    self.optim, self.step  # noqa: B018 - their own checks run when a config is read

  @property
  def optim(self) -> OptimConfig:
    return by_name(OptimConfig, self, decay_steps=self.num_train_steps)

  @property
  def step(self) -> StepConfig:
    return StepConfig(accum_steps=self.accum_steps, loss=by_name(LossConfig, self))

  @property
  def loop(self) -> LoopConfig:
    return by_name(LoopConfig, self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PretrainKeys(TrainingKeys):
  """Pretraining's own keys (`default_config`)."""

  model_family: str = "gpt"
  objective: str = ""  # '' = the family's default pretraining objective
  # Continue pretraining from a checkpoint: a train.py workdir or hf:<dir> (Hugging Face). Its
  # family, architecture and tokenizer replace model_family / model / tokenizer (only the
  # model's runtime keys, e.g. dropout_rate or remat_policy, still apply).
  init_from: str = ""

  # Data: see flaxlm/data/sources.py for the dataset strings.
  dataset: str = "builtin:python-docs"
  data_dir: str = ""  # TFDS cache; '' = ~/.cache/flaxlm/tfds
  text_feature: str = "text"
  seq_len: int = 128
  window_stride: int = 0  # 0 = seq_len: packed windows; 1 = every offset (nanoGPT sampling)
  val_fraction: float = 0.1
  eval_dataset: str = ""  # validate on another dataset string instead of a held-out split
  # Encoder-decoder: decoder tokens per row (0 = seq_len; span_corruption derives its own)
  # and, for parallel text (objective 'seq2seq'), pairs packed per row.
  target_len: int = 0
  pairs_per_example: int = 1
  pad_vocab_to: int = 128  # model vocab rounded up for fast, evenly sharded embeddings
  # Processes that make training examples (masking, span corruption, packing) beside the
  # training loop; 0 = threads of the main process (enough for the small configs here).
  data_workers: int = 0
  # The tokenizer and token shards: '' = <workdir>/data; a folder made by
  # `python -m flaxlm.data.prepare`, read by every host of a pod (refused if it was prepared
  # from other inputs or with another tokenizer).
  corpus_cache: str = ""

  eval_batches: int = 8
  sample_tokens: int = 200  # tokens sampled after training (0: none)
  sample_prompt: str = ""


def default_config() -> ml_collections.ConfigDict:
  """Every key a run understands, with its default. Config files start from this."""
  c = ml_collections.ConfigDict()
  write_keys(c, PretrainKeys)
  c.model = model_preset("gpt", "tiny")
  c.tokenizer = ml_collections.ConfigDict(dataclasses.asdict(TokenizerConfig()))
  c.masking = ml_collections.ConfigDict(dataclasses.asdict(MaskingConfig()))  # objective 'mlm'
  c.spans = ml_collections.ConfigDict(dataclasses.asdict(SpanCorruptionConfig()))  # T5
  return c


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig(PretrainKeys):
  """Everything `pretraining.train` needs, typed and validated: the keys, and the blocks
  that belong to a class."""

  model: object  # the family's frozen config (vocab_size may be 0: set from the tokenizer)
  masking: MaskingConfig
  spans: SpanCorruptionConfig
  tokenizer: TokenizerConfig

  @property
  def data(self) -> DataConfig:
    return by_name(DataConfig, self)


def from_config_dict(c: ml_collections.ConfigDict) -> RunConfig:
  check_keys(c)
  family = registry.family_of(c.model_family)
  model = registry.model_config(c.model_family, c.model.to_dict())
  objective = c.objective or family.objective
  return RunConfig(
    **dict(read_keys(c, PretrainKeys), objective=objective),
    model=objectives.with_heads(objective, model),
    masking=MaskingConfig(**c.masking.to_dict()),
    spans=SpanCorruptionConfig(**c.spans.to_dict()),
    tokenizer=TokenizerConfig(**c.tokenizer.to_dict()),
  )


def merged_config(defaults: ml_collections.ConfigDict, saved: dict) -> ml_collections.ConfigDict:
  """A checkpoint's saved config over today's defaults: keys added to flaxlm since it was
  written take their defaults, keys flaxlm no longer has are ignored; the blocks whose keys
  belong to a class (model, task) and the mesh are taken whole. Both jobs read saved configs
  through this."""

  def merge(dst: ml_collections.ConfigDict, src: dict):
    for key, value in src.items():
      if key not in dst:
        continue
      block = isinstance(dst[key], ml_collections.ConfigDict) and isinstance(value, dict)
      if block and key in ("model", "task", "mesh"):
        dst[key] = ml_collections.ConfigDict(value)
      elif block:
        merge(dst[key], value)
      else:
        dst[key] = value

  merge(defaults, saved)
  return defaults


def from_saved(saved: dict) -> RunConfig:
  """The RunConfig of a checkpoint's saved config (see `merged_config`)."""
  return from_config_dict(merged_config(default_config(), saved))


def setting_values(run, keys: tuple[str, ...]) -> dict:
  """{dotted key: its value in `run`} as JSON: what a checkpoint records of the settings a
  resumed run must keep (the data order, the labels, the model it reinterprets)."""
  values = {}
  for key in keys:
    value = run
    for part in key.split("."):
      value = getattr(value, part)
    values[key] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
  return json.loads(json.dumps(values))


def check_same_settings(saved: dict, run, keys: tuple[str, ...], directory, what: str) -> None:
  """The one resume-compatibility check of both jobs: refuses, naming each changed key with
  its old and new value, to resume a checkpoint that `run` would reinterpret."""
  now = setting_values(run, keys)
  changed = [f"{k} ({saved.get(k)!r} -> {now[k]!r})" for k in keys if saved.get(k) != now[k]]
  if changed:
    raise CheckpointMismatchError(
      f"the checkpoint in {directory} was trained with other {what}: {', '.join(changed)}. "
      "Rerun with the original values, or start a fresh --workdir."
    )


def check_keys(
  c: ml_collections.ConfigDict, reference: ml_collections.ConfigDict | None = None, prefix: str = ""
) -> None:
  """Fails on a key that the defaults do not have, naming the closest valid keys."""
  reference = default_config() if reference is None else reference
  for key in c.keys():
    if key in ("model", "task"):  # checked against the family's / task's config class
      continue
    if key not in reference:
      close = difflib.get_close_matches(key, list(reference.keys()), n=3)
      hint = f"; did you mean {', '.join(prefix + k for k in close)}?" if close else ""
      raise ConfigError(f"unknown config key {prefix + key!r}{hint}")
    if isinstance(c[key], ml_collections.ConfigDict) and key not in ("mesh",):
      check_keys(c[key], reference[key], prefix + key + ".")


def suggest_key(bad: str, c: ml_collections.ConfigDict) -> list[str]:
  """Dotted keys of `c` close to `bad` (for command-line override errors)."""
  flat = []

  def walk(d, prefix):
    for k in d.keys():
      flat.append(prefix + k)
      if isinstance(d[k], ml_collections.ConfigDict):
        walk(d[k], prefix + k + ".")

  walk(c, "")
  return difflib.get_close_matches(bad, flat, n=3, cutoff=0.5)


def dump_config_json(c: ml_collections.ConfigDict) -> dict:
  """A config as plain JSON (saved in checkpoints beside the typed run config)."""
  return json.loads(c.to_json_best_effort())
