"""Checks a run's config before any data is read, each failing with one line that names the
key or value and the fix (`flaxlm.errors.ConfigError`). Pretraining and fine-tuning both
call these; what only one of them needs lives with it."""

from __future__ import annotations

import jax

from flaxlm import objectives
from flaxlm.data import spec
from flaxlm.data.tokenizers.config import TokenizerConfig, reserved_names
from flaxlm.errors import ConfigError
from flaxlm.nn import attention, sharding


def make_mesh(axes: dict, devices=None):
  try:
    return sharding.make_mesh(axes, devices)
  except ValueError as e:
    raise ConfigError(
      f"{e}; devices here: {jax.device_count()} {jax.devices()[0].platform}"
    ) from None


def check_batches(batch_size: int, eval_batch_size: int, accum_steps: int, mesh) -> None:
  dp = sharding.data_parallel_size(mesh)
  if batch_size % (dp * accum_steps):
    raise ConfigError(
      f"batch_size={batch_size} must be divisible by data-parallel size {dp} (mesh data x fsdp) "
      f"x accum_steps {accum_steps}; e.g. --config.batch_size={dp * accum_steps * max(1, batch_size // (dp * accum_steps))}"
    )
  if eval_batch_size % dp:
    raise ConfigError(
      f"eval_batch_size={eval_batch_size} must be divisible by the data-parallel size {dp} "
      f"(mesh data x fsdp); e.g. --config.eval_batch_size={dp * max(1, eval_batch_size // dp)}"
    )


def check_divisible(trainable) -> None:
  """Every parameter dimension divides by the mesh axes its logical name maps to."""
  # leaves, not flattened dicts: a quantized kernel (QLoRA) is a pytree of values and scales
  shapes = jax.tree_util.tree_leaves_with_path(trainable.abstract_state.params)
  for (path, leaf), s in zip(shapes, jax.tree.leaves(trainable.param_shardings), strict=True):
    try:
      s.shard_shape(leaf.shape)
    except ValueError:
      axes = dict(trainable.mesh.shape)
      name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
      raise ConfigError(
        f"parameter {name} {tuple(leaf.shape)} cannot be split as {s.spec} over mesh "
        f"{axes}: a dimension does not divide by its mesh axis; change --config.mesh or the "
        "model size (e.g. num_kv_heads divisible by mesh.tensor)"
      ) from None


POSITIVE = ("num_train_steps", "log_every", "batch_size", "eval_batch_size", "eval_batches")
NON_NEGATIVE = ("eval_every", "checkpoint_every", "warmup_steps", "weight_decay", "grad_clip_norm")


def check_loop_keys(run) -> None:
  for key in POSITIVE:
    if getattr(run, key, 1) < 1:
      raise ConfigError(f"{key}={getattr(run, key)}; it must be at least 1")
  for key in NON_NEGATIVE:
    value = getattr(run, key, None)
    if value is None:
      value = getattr(run.optim, key, 0)
    if value < 0:
      raise ConfigError(f"{key}={value}; it must be >= 0 (0 turns it off)")
  if run.step.accum_steps < 1:
    raise ConfigError(f"accum_steps={run.step.accum_steps}; it must be at least 1")
  if run.keep_checkpoints < 1:
    raise ConfigError(
      f"keep_checkpoints={run.keep_checkpoints} would delete every checkpoint; use 1 or more"
    )
  if not 0 <= run.step.loss.label_smoothing < 1:
    raise ConfigError(f"label_smoothing={run.step.loss.label_smoothing}; use a value in [0, 1)")
  for key in ("b1", "b2"):
    if not 0 <= getattr(run.optim, key) < 1:
      raise ConfigError(f"{key}={getattr(run.optim, key)}; use a value in [0, 1)")


def check_objective_tokens(objective: str, tok: TokenizerConfig) -> None:
  declared = objectives.entry(objective)
  needed, fix = declared.tokens, declared.tokens_fix
  missing = [n for n in needed if n not in reserved_names(tok)]
  if missing:
    raise ConfigError(
      f"objective {objective!r} needs the tokenizer to reserve {missing}, which "
      f"tokenizer.kind={tok.kind!r} with special_tokens={tok.special_tokens!r} does not; set {fix}"
    )


def check_lengths(model_config, lengths: dict[str, int]) -> None:
  """Sequence lengths against a model's position table (learned and sinusoidal positions
  have max_len rows; a longer sequence would index past them)."""
  position = getattr(model_config, "position", "")
  max_len = getattr(model_config, "max_len", 0)
  if position not in ("learned", "sinusoidal") or not max_len:
    return
  for key, length in lengths.items():
    if length > max_len:
      raise ConfigError(
        f"{key}={length} is longer than model.max_len={max_len} ({position} positions); "
        f"lower --config.{key.split()[0]} or raise --config.model.max_len"
      )


def check_attention(model_config, seq_len: int = 0) -> None:
  """The attention kernel against this backend, the compute dtype, the model's position bias
  and (when given) the sequence length; see flaxlm.nn.attention."""
  impl = getattr(model_config, "attention_impl", "auto")
  backend = jax.default_backend()
  if impl == "cudnn":
    if backend not in ("gpu", "cuda"):
      raise ConfigError(
        f"model.attention_impl='cudnn' needs an NVIDIA GPU (this backend is {backend}); use 'auto'"
      )
    if model_config.dtype == "float32":
      raise ConfigError(
        "model.attention_impl='cudnn' runs in bfloat16 or float16; set --config.model.dtype=bfloat16"
      )
  if impl in attention.SPLASH:
    if impl == "splash" and backend != "tpu":
      raise ConfigError(
        f"model.attention_impl='splash' is a TPU kernel (this backend is {backend}); use 'auto', "
        "or 'splash_interpret' to run its Pallas program in the (slow) interpreter for tests"
      )
    if getattr(model_config, "position", "") == "relative":
      raise ConfigError(
        f"model.attention_impl={impl!r} takes no additive bias, and position='relative' (T5) "
        "adds one; use 'auto' (the reference path) or 'xla'"
      )
    if seq_len % attention.SPLASH_BLOCK:
      raise ConfigError(
        f"model.attention_impl={impl!r} needs seq_len to be a multiple of "
        f"{attention.SPLASH_BLOCK} (got {seq_len}); use 'auto' or change --config.seq_len"
      )


def check_dataset(dataset: str, text_feature: str, key: str) -> None:
  spec.check(dataset, text_feature, key)
  if dataset.startswith("tfds:"):  # the name and its features, from the catalog (no download)
    from flaxlm.data import catalog

    name = dataset[len("tfds:") :].partition(":")[0]
    catalog.check_features(dataset, catalog.tfds_builder(name, ""), text_feature)


def vocab_estimate(tok: TokenizerConfig) -> int:
  """The tokenizer's vocabulary size where the config fixes it (0 where training decides)."""
  if tok.kind == "byte":
    return 259
  if tok.kind in ("sentencepiece", "wordpiece"):
    return tok.vocab_size
  return 0
