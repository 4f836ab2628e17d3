"""A pretraining workdir loaded for use (generation, export, `init_from`): the newest
checkpoint's model, parameters and tokenizer, every setting taken from the checkpoint's own
metadata; or a Hugging Face folder (`hf:<dir>`) imported into the same shape.
"""

from __future__ import annotations

import dataclasses

import jax

from flaxlm import objectives
from flaxlm.config import RunConfig, from_saved
from flaxlm.data import tokenizers
from flaxlm.errors import CheckpointMismatchError, ConfigError, DataNotFoundError
from flaxlm.models import registry
from flaxlm.nn import sharding
from flaxlm.train import validation
from flaxlm.train.checkpoint import Checkpointer
from flaxlm.train.steps import Trainable, token_init
from flaxlm.workdir import Workdir


def fitted_model_config(run: RunConfig, vocab_size: int):
  """The run's model config with its vocabulary sized for the tokenizer."""
  model_config = run.model
  if not model_config.vocab_size:
    vocab = registry.padded_vocab(vocab_size, run.pad_vocab_to)
    return dataclasses.replace(model_config, vocab_size=vocab)
  if model_config.vocab_size < vocab_size:
    raise ConfigError(
      f"model.vocab_size={model_config.vocab_size} is smaller than the tokenizer's {vocab_size}; "
      "set --config.model.vocab_size=0 to size it from the tokenizer"
    )
  return model_config


def build(run: RunConfig, vocab_size: int, mesh=None) -> Trainable:
  """A pretraining run's model + optimizer + sharded layout, its vocabulary fitted to the
  tokenizer (what `pretraining.train` trains and `load_trained` restores into)."""
  model_config = fitted_model_config(run, vocab_size)
  objectives.check_objective(run.objective)
  mesh = mesh or validation.make_mesh(run.mesh)
  validation.check_batches(run.batch_size, run.eval_batch_size, run.step.accum_steps, mesh)
  model = registry.build_model(run.model_family, model_config)
  init_shape = (sharding.data_parallel_size(mesh), min(run.data.seq_len, 8))
  trainable = Trainable.with_adamw(
    model,
    run.optim,
    mesh,
    sharding.rules_from_config(run.logical_axis_rules),
    objectives.entry(run.objective).loss,
    run.step,
    token_init(model, *init_shape),
  )
  validation.check_divisible(trainable)
  return trainable


def load_trained(workdir: str | Workdir, mesh=None) -> tuple[Trainable, object, object]:
  """(trainable, params, tokenizer) from the newest checkpoint of a pretraining workdir.

  The model family, model config, objective and tokenizer all come from the checkpoint's
  own metadata. `mesh` defaults to one device."""
  if str(workdir).startswith("hf:"):
    return _load_hf(str(workdir)[len("hf:") :], mesh)
  workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
  if not workdir.checkpoints.exists():
    raise DataNotFoundError(
      f"no checkpoint in {workdir.checkpoints}; train one first: "
      f"python train.py --config=configs/gpt_tiny.py --workdir={workdir}"
    )
  ckpt = Checkpointer(workdir.checkpoints, async_save=False, create=False)
  try:
    meta = ckpt.restore_meta()
    if meta is None:
      raise DataNotFoundError(
        f"no checkpoint in {ckpt.directory}; train one first: "
        f"python train.py --config=configs/gpt_tiny.py --workdir={workdir}"
      )
    if meta.get("kind", "pretraining") != "pretraining":
      raise CheckpointMismatchError(
        f"{workdir} holds a fine-tuned {meta.get('task', {}).get('name')} model; load it with "
        "flaxlm.load or python finetune.py --mode=evaluate"
      )
    mesh = mesh or sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    run = saved_run(meta, sharding.data_parallel_size(mesh))
    tokenizer = tokenizers.tokenizer_from_json(meta["tokenizer"])
    trainable = build(run, tokenizer.vocab_size, mesh)
    restored = ckpt.restore(trainable.abstract_state)
    if restored is None:
      raise CheckpointMismatchError(f"no readable checkpoint in {ckpt.directory}")
  finally:
    ckpt.close()
  return trainable, restored[1].params, tokenizer


def saved_family(workdir: str | Workdir) -> str:
  """The model family a pretraining workdir's newest checkpoint was written with (its own
  metadata names it: no guessing from the module, which a wrapper may have replaced), or
  of a Hugging Face folder ('hf:<dir>', by its config.json's model_type)."""
  if str(workdir).startswith("hf:"):
    from flaxlm.convert import api, files

    model_type = files.read_config(str(workdir)[len("hf:") :]).get("model_type")
    return api.MODEL_TYPES[model_type].FAMILY if model_type in api.MODEL_TYPES else ""
  workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
  ckpt = Checkpointer(workdir.checkpoints, async_save=False, create=False)
  try:
    meta = ckpt.restore_meta() or {}
  finally:
    ckpt.close()
  return meta.get("model_family", "")


def _load_hf(path: str, mesh=None):
  """(trainable, params, tokenizer) of a Hugging Face folder, as `load_trained` gives a
  workdir's: the imported model under its family's default objective."""
  from flaxlm.convert import load_hf

  imported = load_hf(path)
  if imported.task or imported.tokenizer is None:
    what = f"a {imported.task} task model" if imported.task else "no tokenizer files"
    raise CheckpointMismatchError(
      f"hf:{path} holds {what}; generation needs a language model with its tokenizer"
    )
  mesh = mesh or sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  family = registry.family_of(imported.family)
  meta = {
    "model_family": imported.family,
    "model": dataclasses.asdict(imported.model_config),
    "objective": family.objective,
  }
  trainable = build(
    saved_run(meta, sharding.data_parallel_size(mesh)), imported.tokenizer.vocab_size, mesh
  )
  params = jax.device_put(imported.params, trainable.state_shardings.params)
  return trainable, params, imported.tokenizer


def saved_run(meta: dict, batch_size: int = 1) -> RunConfig:
  """The RunConfig a checkpoint was written with, its model family, model and objective taken
  from the checkpoint's own metadata (not from a config that may be missing or older)."""
  family = meta["model_family"]
  config = dict(meta.get("config") or {})
  config.update(
    model_family=family,
    model=meta["model"],
    objective=meta.get("objective", config.get("objective", "")),
  )
  run = from_saved(config)
  return dataclasses.replace(
    run,
    model=registry.model_config(family, meta["model"]),
    batch_size=batch_size,
    eval_batch_size=batch_size,
    mesh={"data": 1, "fsdp": 1, "tensor": 1},
    accum_steps=1,
  )
