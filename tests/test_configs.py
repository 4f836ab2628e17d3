"""Every file in configs/ loads, validates and builds its sharded abstract train state."""

import importlib.util
import pathlib
import types

import jax
import pytest

from flaxlm import sharding
from flaxlm.config import from_config_dict
from flaxlm.trainer import build, run_objective

CONFIGS = sorted((pathlib.Path(__file__).parent.parent / "configs").glob("*.py"))


def load(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


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
  } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_abstract_state(path):
  config = load(path)
  module_doc = path.read_text().split('"""')[1]
  assert "python train.py --config=configs/" + path.name in module_doc, (
    "docstring must say how to run it"
  )
  run = from_config_dict(config)
  # The config's mesh over as many of the 8 emulated devices as its batch divides.
  n = next(n for n in (8, 4, 2, 1) if run.batch_size % n == 0)
  mesh = sharding.make_mesh(run.mesh, jax.devices()[:n])
  vocab = run.tokenizer.vocab_size if run.tokenizer.kind == "sentencepiece" else 256
  # Stands in for the tokenizer a run trains: the reserved ids of every special_tokens layout.
  special = {"pad": 0, "unk": 1, "eos": 2, "cls": 3, "sep": 4, "mask": 5}
  special.update({f"sentinel_{i}": 6 + i for i in range(100)})
  tokenizer = types.SimpleNamespace(vocab_size=vocab, special_ids=special)
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


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_data_keys_reach_the_run(path):
  """Every DataConfig field is taken from the config key of the same name (a key that is
  read nowhere would silently keep its default, e.g. evaluating on the wrong text)."""
  import dataclasses

  config = load(path)
  run = from_config_dict(config)
  for field in dataclasses.fields(run.data):
    assert getattr(run.data, field.name) == config[field.name], field.name
