"""Orbax checkpoints (flaxlm/train/checkpoint.py): exact round trips, restoring onto another mesh,
keep-N, and the error a user sees for a mismatched or damaged checkpoint."""

import functools
import os
import pathlib

import jax
import numpy as np
import pytest

from flaxlm.config import default_config, from_config_dict
from flaxlm.nn import sharding
from flaxlm.pretraining.run import build
from flaxlm.train import checkpoint
from flaxlm.train.checkpoint import Checkpointer, CheckpointMismatchError

# A failed Orbax restore leaves TensorStore callbacks that fire after their event loop closed.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

META = {"step": 7, "data_iterator": {"next_index": 7}, "tokenizer": {"kind": "byte"}, "x": [1.5]}


@functools.cache
def trainable(mesh_axes=(("data", 1),), **model):
  c = default_config()
  c.model.update(num_layers=1, num_heads=2, embed_dim=32, mlp_dim=64, max_len=32)
  c.model.update(model)
  c.update(seq_len=16, batch_size=8)
  c.tokenizer.kind = "byte"
  mesh_axes = dict(mesh_axes)
  n = int(np.prod(list(mesh_axes.values())))
  return build(from_config_dict(c), 259, sharding.make_mesh(mesh_axes, jax.devices()[:n]))


@functools.cache
def trained_state(mesh_axes=(("data", 1),)):
  """Random values in the model's state layout (no compile: XLA:CPU takes ~1 s per random op)."""
  rng = np.random.default_rng(0)

  def fill(a):
    if np.issubdtype(a.dtype, np.floating):
      x = rng.standard_normal(a.shape).astype(a.dtype)
    else:
      x = rng.integers(1, 1000, a.shape).astype(a.dtype)
    return jax.device_put(x, a.sharding)

  return jax.tree.map(fill, trainable(mesh_axes).abstract_state)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def save(directory, state=None) -> Checkpointer:
  ckpt = Checkpointer(str(directory), async_save=False)
  assert ckpt.save(7, trained_state() if state is None else state, META, force=True)
  return ckpt


@pytest.mark.parametrize("async_save", [False, True])
def test_round_trip(tmp_path, async_save):
  """A saved state and its JSON metadata restore exactly, with the model's shardings."""
  ckpt = Checkpointer(str(tmp_path), async_save=async_save)
  ckpt.save(7, trained_state(), META, force=True)
  ckpt.close()

  again = Checkpointer(str(tmp_path))
  assert again.latest_step() == 7
  assert again.restore_meta() == META
  restored = again.restore_state(trainable().abstract_state)
  again.close()
  assert_trees_equal(restored, trained_state())
  for leaf, want in zip(
    jax.tree.leaves(restored), jax.tree.leaves(trainable().state_shardings), strict=True
  ):
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim)


def test_restore_onto_another_mesh(tmp_path):
  """A checkpoint written FSDP-sharded over 2 devices loads tensor-sharded and onto one device."""
  written = trained_state((("fsdp", 2),))
  save(tmp_path, written).close()
  for axes in ((("tensor", 2),), (("data", 1),)):
    target = trainable(mesh_axes=axes)
    ckpt = Checkpointer(str(tmp_path))
    restored = ckpt.restore_state(target.abstract_state)
    ckpt.close()
    assert_trees_equal(restored, written)
    for leaf in jax.tree.leaves(restored):
      assert leaf.sharding.mesh.shape == target.mesh.shape


@pytest.mark.parametrize(
  "model", [{"embed_dim": 64}, {"mlp_dim": 128}, {"num_layers": 2}], ids=lambda m: str(m)
)
def test_different_model_raises_mismatch(tmp_path, model):
  """Restoring into another model shape raises CheckpointMismatchError that says what to do."""
  save(tmp_path).close()
  ckpt = Checkpointer(str(tmp_path))
  with pytest.raises(CheckpointMismatchError) as e:
    ckpt.restore_state(trainable(**model).abstract_state)
  ckpt.close()
  message = str(e.value)
  assert str(tmp_path) in message
  assert "different model" in message or "does not match the model" in message
  assert "fresh --workdir" in message and "config it was trained with" in message


def _files(step_dir: pathlib.Path, pattern: str) -> list[pathlib.Path]:
  files = [p for p in step_dir.glob(pattern) if p.is_file()]
  assert files, f"no {pattern} under {step_dir}: {sorted(step_dir.rglob('*'))}"
  return files


def _truncate(path: pathlib.Path):
  with open(path, "r+b") as f:
    f.truncate(path.stat().st_size // 2)


def _garble(path: pathlib.Path):
  path.write_bytes(bytes(255 - b for b in path.read_bytes()))


@pytest.mark.parametrize(
  "damage",
  [
    ("state/**/d/*", _truncate),
    ("state/**/d/*", _garble),
    ("state/**/d/*", os.remove),
    ("state/_METADATA", _garble),
  ],
  ids=["truncated-data", "garbled-data", "deleted-data", "garbled-metadata"],
)
def test_damaged_state_is_reported_as_damaged(tmp_path, damage):
  """A checkpoint whose array files are damaged raises CheckpointMismatchError that says the
  checkpoint could not be read / is corrupt (not that the model is different)."""
  save(tmp_path).close()
  pattern, fn = damage
  for path in _files(tmp_path / "7", pattern):
    fn(path)
  ckpt = Checkpointer(str(tmp_path))
  with pytest.raises(CheckpointMismatchError) as e:
    ckpt.restore_state(trainable().abstract_state)
  ckpt.close()
  message = str(e.value)
  assert "could not be read" in message and "corrupt" in message
  assert "different model" not in message and "does not match the model" not in message
  assert str(tmp_path / "7") in message


def test_damaged_meta_is_reported_as_damaged(tmp_path, caplog):
  """A garbled metadata JSON: reading that step raises CheckpointMismatchError saying it could
  not be read; looking for the newest readable checkpoint skips it with that warning."""
  save(tmp_path).close()
  for path in _files(tmp_path / "7", "meta/metadata"):
    path.write_text("{not json")
  ckpt = Checkpointer(str(tmp_path))
  with pytest.raises(CheckpointMismatchError, match="could not be read.*corrupt"):
    ckpt.restore_meta(7)
  assert ckpt.restore_meta() is None  # no other step to fall back to
  assert "checkpoint" in caplog.text and "/7 could not be read" in caplog.text
  ckpt.close()


def test_empty_directory(tmp_path):
  """An empty or new checkpoint directory has no step and no metadata (a fresh run)."""
  ckpt = Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.latest_step() is None
  assert ckpt.restore_meta() is None
  ckpt.close()


def test_keep_and_save_interval(tmp_path):
  """Only the newest `keep` steps stay on disk; after the first save, saves happen every
  `save_every` steps or when forced."""
  state = trained_state()
  ckpt = Checkpointer(str(tmp_path), keep=2, save_every=2, async_save=False)
  saved = [ckpt.save(step, state, {"step": step}) for step in range(1, 8)]
  assert saved == [True, True, False, True, False, True, False]  # Orbax always saves the first
  assert ckpt.save(7, state, {"step": 7}, force=True)
  ckpt.close()
  steps = sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit())
  assert steps == [6, 7]
  again = Checkpointer(str(tmp_path))
  assert again.latest_step() == 7
  assert again.restore_meta() == {"step": 7}
  assert again.restore_meta(step=6) == {"step": 6}
  again.close()


def test_check_shapes_names_the_leaf():
  """The shape check that backs up Orbax names each mismatched leaf and both shapes."""
  a = {"w": jax.ShapeDtypeStruct((4, 8), np.float32)}
  r = {"w": np.zeros((4, 16), np.float32)}
  with pytest.raises(CheckpointMismatchError, match=r"\['w'\].*\(4, 16\).*\(4, 8\)"):
    checkpoint.check_shapes(r, a, "somewhere/3")
