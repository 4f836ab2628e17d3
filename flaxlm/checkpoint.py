"""Checkpoints with Orbax: train state (params, optimizer, step, RNG) + JSON metadata
(data iterator position, tokenizer, model config). No pickle anywhere.

Saves are asynchronous; `keep` bounds how many stay on disk. Restoring takes an abstract
state with the *current* shardings, so a checkpoint written on one mesh loads onto another.
"""

from __future__ import annotations

import json
import os
import re

import jax
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
  """The checkpoint in a workdir does not fit the model / config being run."""


class Checkpointer:
  def __init__(
    self,
    directory: str,
    keep: int = 3,
    save_every: int = 1000,
    async_save: bool = True,
    create: bool = True,  # False for readers: a missing directory is just "no checkpoint"
  ):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        save_interval_steps=max(save_every, 1),
        enable_async_checkpointing=async_save,
        create=create,
      ),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, meta: dict, force: bool = False) -> bool:
    return self.manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      force=force,
    )

  def restore_meta(self, step: int | None = None) -> dict | None:
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - orbax raises many types for a damaged directory
      raise CheckpointMismatchError(self._damaged(step, e)) from e
    return out["meta"]

  def restore_state(self, abstract_state, step: int | None = None):
    """Restores into the shapes, dtypes and shardings of `abstract_state`."""
    step = self.latest_step() if step is None else step
    try:
      out = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
      )
    except (ValueError, KeyError, TypeError) as e:
      if _unreadable(e):
        raise CheckpointMismatchError(self._damaged(step, e)) from e
      raise CheckpointMismatchError(
        f"checkpoint {self.directory}/{step} does not match the model being built ({e}). "
        "Run with the config it was trained with, or start a fresh --workdir."
      ) from e
    except Exception as e:  # noqa: BLE001
      raise CheckpointMismatchError(self._damaged(step, e)) from e
    _check_shapes(out["state"], abstract_state, f"{self.directory}/{step}")
    return out["state"]

  def _damaged(self, step, e) -> str:
    return (
      f"checkpoint {self.directory}/{step} could not be read ({type(e).__name__}: {e}). "
      f"It may be incomplete or corrupt: move that step's folder aside to resume from an "
      f"earlier one, or start a fresh --workdir."
    )

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


# TensorStore reports I/O and decoding failures as ValueError('<STATUS>: ...'); a model that
# does not fit the checkpoint fails Orbax's own tree and shape checks instead.
_IO_STATUS = re.compile(r"(DATA_LOSS|OUT_OF_RANGE|NOT_FOUND|UNKNOWN|INTERNAL|PERMISSION_DENIED):")


def _unreadable(e: Exception) -> bool:
  return isinstance(e, UnicodeDecodeError | json.JSONDecodeError) or bool(_IO_STATUS.match(str(e)))


def _check_shapes(restored, abstract, where: str):
  bad = []

  def check(path, r, a):
    if getattr(r, "shape", None) != getattr(a, "shape", None):
      bad.append(f"{jax.tree_util.keystr(path)}: checkpoint {r.shape} vs model {a.shape}")

  jax.tree_util.tree_map_with_path(check, restored, abstract)
  if bad:
    raise CheckpointMismatchError(
      f"checkpoint {where} was written for a different model: "
      + "; ".join(bad[:5])
      + ". Run with the config it was trained with, or start a fresh --workdir."
    )
