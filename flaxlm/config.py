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

from flaxlm import optim
from flaxlm.data.spec import DataConfig
from flaxlm.data.tokenizers import TokenizerConfig
from flaxlm.errors import ConfigError
from flaxlm.loop import EarlyStopping, LoopConfig
from flaxlm.losses import LossConfig
from flaxlm.models import registry
from flaxlm.objectives import MaskingConfig, SpanCorruptionConfig
from flaxlm.training import StepConfig


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
class RunConfig:
  """Everything `trainer.train` needs, typed and validated."""

  model_family: str
  model: object  # the family's frozen config (vocab_size may be 0: set from the tokenizer)
  objective: str
  masking: MaskingConfig
  spans: SpanCorruptionConfig
  data: DataConfig
  tokenizer: TokenizerConfig
  optim: optim.OptimConfig
  step: StepConfig
  pad_vocab_to: int
  num_train_steps: int
  batch_size: int
  seed: int
  log_every: int
  eval_every: int
  eval_batches: int
  eval_batch_size: int
  checkpoint_every: int
  keep_checkpoints: int
  peak_flops: float
  sample_tokens: int
  sample_prompt: str
  mesh: dict
  logical_axis_rules: tuple
  cpu_devices: int
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
  return RunConfig(
    model_family=c.model_family,
    model=model,
    objective=c.objective or family.objective,
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
    optim=optim_config(c),
    step=step_config(c),
    pad_vocab_to=c.pad_vocab_to,
    num_train_steps=c.num_train_steps,
    batch_size=c.batch_size,
    seed=c.seed,
    log_every=c.log_every,
    eval_every=c.eval_every,
    eval_batches=c.eval_batches,
    eval_batch_size=c.eval_batch_size,
    checkpoint_every=c.checkpoint_every,
    keep_checkpoints=c.keep_checkpoints,
    peak_flops=c.peak_flops,
    sample_tokens=c.sample_tokens,
    sample_prompt=c.sample_prompt,
    mesh=c.mesh.to_dict(),
    logical_axis_rules=tuple(tuple(r) for r in c.logical_axis_rules),
    cpu_devices=c.cpu_devices,
    init_from=c.init_from,
    data_workers=c.data_workers,
    corpus_cache=c.corpus_cache,
  )


def from_saved(saved: dict) -> RunConfig:
  """The RunConfig of a checkpoint's saved config; keys added to flaxlm since it was written
  take their defaults and keys flaxlm no longer has are ignored."""

  def merge(dst: ml_collections.ConfigDict, src: dict):
    for key, value in src.items():
      if key not in dst:
        continue
      nested = isinstance(dst[key], ml_collections.ConfigDict) and isinstance(value, dict)
      if nested and key not in ("model", "mesh"):  # model and mesh are taken whole
        merge(dst[key], value)
      else:
        dst[key] = value

  c = default_config()
  merge(c, saved)
  return from_config_dict(c)


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
