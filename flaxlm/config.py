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

from flaxlm import objectives, optim
from flaxlm.data.spec import DataConfig
from flaxlm.data.tokenizer_config import TokenizerConfig
from flaxlm.errors import CheckpointMismatchError, ConfigError
from flaxlm.losses import LossConfig
from flaxlm.models import registry
from flaxlm.objectives import MaskingConfig, SpanCorruptionConfig

# --- what the engine takes (plain settings: reading a config imports no loop or step code) ----


@dataclasses.dataclass(frozen=True)
class StepConfig:
  accum_steps: int = 1
  loss: LossConfig = LossConfig()


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
  metric: str = ""  # an eval metric (e.g. 'eval_accuracy'); '' keeps no best checkpoint
  mode: str = "max"  # max | min
  patience: int = 0  # evaluations without improvement before stopping; 0 = never stop


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


def default_config() -> ml_collections.ConfigDict:
  """Every key a run understands, with its default. Config files start from this."""
  c = ml_collections.ConfigDict()
  c.model_family = "gpt"
  c.model = model_preset("gpt", "tiny")
  c.objective = ""  # '' = the family's default pretraining objective
  # Continue pretraining from a checkpoint: a train.py workdir or hf:<dir> (Hugging Face). Its
  # family, architecture and tokenizer replace model_family / model / tokenizer (only the
  # model's runtime keys, e.g. dropout_rate or remat_policy, still apply).
  c.init_from = ""

  # Data: see flaxlm/data/sources.py for the dataset strings.
  c.dataset = "builtin:python-docs"
  c.data_dir = ""  # TFDS cache; '' = ~/.cache/flaxlm/tfds
  c.text_feature = "text"
  c.seq_len = 128
  c.window_stride = 0  # 0 = seq_len: packed windows; 1 = every offset (nanoGPT sampling)
  c.val_fraction = 0.1
  c.eval_dataset = ""  # validate on another dataset string instead of a held-out split
  c.tokenizer = ml_collections.ConfigDict(dataclasses.asdict(TokenizerConfig()))
  c.masking = ml_collections.ConfigDict(dataclasses.asdict(MaskingConfig()))  # objective 'mlm'
  c.spans = ml_collections.ConfigDict(dataclasses.asdict(SpanCorruptionConfig()))  # T5
  # Encoder-decoder: decoder tokens per row (0 = seq_len; span_corruption derives its own)
  # and, for parallel text (objective 'seq2seq'), pairs packed per row.
  c.target_len = 0
  c.pairs_per_example = 1
  c.pad_vocab_to = 128  # model vocab rounded up for fast, evenly sharded embeddings
  # Processes that make training examples (masking, span corruption, packing) beside the
  # training loop; 0 = threads of the main process (enough for the small configs here).
  c.data_workers = 0
  # The tokenizer and token shards: '' = <workdir>/data; a folder made by
  # `python -m flaxlm.data.prepare`, read by every host of a pod (refused if it was prepared
  # from other inputs or with another tokenizer).
  c.corpus_cache = ""

  add_training_keys(c)
  c.eval_batches = 8
  c.sample_tokens = 200  # tokens sampled after training (0: none)
  c.sample_prompt = ""
  return c


def add_training_keys(c: ml_collections.ConfigDict) -> None:
  """The keys pretraining and fine-tuning share: optimization, reporting, sharding."""
  # Optimization.
  c.num_train_steps = 1000
  c.batch_size = 32  # global, in sequences: batch_size * seq_len tokens per step
  c.accum_steps = 1  # microbatches per step (batch_size / accum_steps sequences each)
  c.learning_rate = 1e-3
  c.schedule = "cosine"
  c.warmup_steps = 100
  c.min_learning_rate = 1e-4
  c.weight_decay = 0.1
  c.decay_embeddings = False
  c.b1 = 0.9
  c.b2 = 0.95
  c.layer_decay = 1.0  # < 1: layer-wise learning-rate decay (lower layers learn slower)
  c.grad_clip_norm = 1.0
  c.label_smoothing = 0.0
  c.z_loss = 0.0
  c.seed = 0

  # Reporting and checkpoints.
  c.log_every = 50
  c.eval_every = 250
  c.eval_batch_size = 32
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.peak_flops = 0.0  # per-device peak FLOP/s for MFU where the device is not in the table

  # Sharding: mesh axis sizes (-1 takes the remaining devices) and logical-axis rules
  # ([] = flaxlm.sharding.DEFAULT_RULES).
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.logical_axis_rules = []
  # CPU-only hosts: XLA devices to split the cores into (train.py; -1: one per core). Small
  # models train faster data-parallel over one device per core; see cli.use_cpu_devices.
  c.cpu_devices = 1


@dataclasses.dataclass(frozen=True)
class TrainingKeys:
  """The typed keys of `add_training_keys` both jobs share (their defaults and comments are
  there; `training_keys` reads them, so each is named once more, here, with its type)."""

  optim: optim.OptimConfig
  step: StepConfig
  num_train_steps: int
  batch_size: int
  seed: int
  log_every: int
  eval_every: int
  eval_batch_size: int
  checkpoint_every: int
  keep_checkpoints: int
  peak_flops: float
  mesh: dict
  logical_axis_rules: tuple
  cpu_devices: int


def training_keys(c: ml_collections.ConfigDict) -> dict:
  """The `TrainingKeys` fields of a config, typed."""
  plain = {f.name: c[f.name] for f in dataclasses.fields(TrainingKeys)
           if f.name not in ("optim", "step", "mesh", "logical_axis_rules")}  # fmt: skip
  return dict(
    plain,
    optim=optim_config(c),
    step=step_config(c),
    mesh=c.mesh.to_dict(),
    logical_axis_rules=tuple(tuple(r) for r in c.logical_axis_rules),
  )


@dataclasses.dataclass(frozen=True)
class RunConfig(TrainingKeys):
  """Everything `pretraining.train` needs, typed and validated."""

  model_family: str
  model: object  # the family's frozen config (vocab_size may be 0: set from the tokenizer)
  objective: str
  masking: MaskingConfig
  spans: SpanCorruptionConfig
  data: DataConfig
  tokenizer: TokenizerConfig
  pad_vocab_to: int
  eval_batches: int
  sample_tokens: int
  sample_prompt: str
  init_from: str = ""
  data_workers: int = 0
  corpus_cache: str = ""

  @property
  def loop(self) -> LoopConfig:
    return loop_config(self)


def loop_config(run, early_stopping: EarlyStopping = EarlyStopping()) -> LoopConfig:
  """The training loop's settings from a run config (pretraining or fine-tuning)."""
  return LoopConfig(
    num_train_steps=run.num_train_steps,
    log_every=run.log_every,
    eval_every=run.eval_every,
    checkpoint_every=run.checkpoint_every,
    early_stopping=early_stopping,
    peak_flops=run.peak_flops,
  )


def step_config(c: ml_collections.ConfigDict) -> StepConfig:
  loss = LossConfig(label_smoothing=c.label_smoothing, z_loss=c.z_loss)
  return StepConfig(accum_steps=c.accum_steps, loss=loss)


def optim_config(c: ml_collections.ConfigDict) -> optim.OptimConfig:
  return optim.OptimConfig(
    learning_rate=c.learning_rate,
    schedule=c.schedule,
    warmup_steps=c.warmup_steps,
    decay_steps=c.num_train_steps,
    min_learning_rate=c.min_learning_rate,
    b1=c.b1,
    b2=c.b2,
    weight_decay=c.weight_decay,
    decay_embeddings=c.decay_embeddings,
    grad_clip_norm=c.grad_clip_norm,
    layer_decay=c.layer_decay,
  )


def from_config_dict(c: ml_collections.ConfigDict) -> RunConfig:
  check_keys(c)
  family = registry.family_of(c.model_family)
  model = registry.model_config(c.model_family, c.model.to_dict())
  objective = c.objective or family.objective
  return RunConfig(
    model_family=c.model_family,
    model=objectives.with_heads(objective, model),
    objective=objective,
    masking=MaskingConfig(**c.masking.to_dict()),
    spans=SpanCorruptionConfig(**c.spans.to_dict()),
    data=DataConfig(
      dataset=c.dataset,
      data_dir=c.data_dir,
      text_feature=c.text_feature,
      seq_len=c.seq_len,
      window_stride=c.window_stride,
      val_fraction=c.val_fraction,
      eval_dataset=c.eval_dataset,
      target_len=c.target_len,
      pairs_per_example=c.pairs_per_example,
      seed=c.seed,
    ),
    tokenizer=TokenizerConfig(**c.tokenizer.to_dict()),
    **training_keys(c),
    pad_vocab_to=c.pad_vocab_to,
    eval_batches=c.eval_batches,
    sample_tokens=c.sample_tokens,
    sample_prompt=c.sample_prompt,
    init_from=c.init_from,
    data_workers=c.data_workers,
    corpus_cache=c.corpus_cache,
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
