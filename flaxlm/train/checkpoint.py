"""Checkpoints with Orbax: train state (params, optimizer, step, RNG) + JSON metadata (data
iterator position, tokenizer, model and run config, task). No pickle anywhere.

Saves are asynchronous; `keep` bounds how many stay on disk, and temporary folders of saves
that were killed are removed on start. Restoring takes an abstract state with the *current*
shardings, so a checkpoint written on one mesh loads onto another. A damaged newest
checkpoint (a truncated copy, a crash mid-write) is skipped with a warning naming its step,
and the previous one is used; a checkpoint of another model fails with the paths that differ.
"""

from __future__ import annotations

import json
import logging
import os
import re

import jax
import orbax.checkpoint as ocp

from flaxlm.errors import CheckpointMismatchError, WorkdirError
from flaxlm.workdir import as_path

log = logging.getLogger("flaxlm")

__all__ = ["CheckpointMismatchError", "Checkpointer"]


class Checkpointer:
  def __init__(
    self,
    directory: str | os.PathLike,
    keep: int = 3,
    save_every: int = 1000,
    async_save: bool = True,
    create: bool = True,  # False for readers: a missing directory is just "no checkpoint"
  ):
    if keep < 1:
      raise ValueError(f"keep_checkpoints={keep} would delete every checkpoint; use 1 or more")
    self.directory = as_path(directory)
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        save_interval_steps=max(save_every, 1),
        enable_async_checkpointing=async_save,
        create=create,
        cleanup_tmp_directories=create,  # folders of saves that were killed mid-write
      ),
    )
    # Orbax removes those folders in a background future that only its next save awaits; wait
    # now, so that nothing (a listing, a resume) ever sees a half-written step.
    if create and hasattr(self.manager, "_maybe_await_cleanup_tmp_directory"):
      self.manager._maybe_await_cleanup_tmp_directory()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, meta: dict, force: bool = False) -> bool:
    try:
      return self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=force,
      )
    except Exception as e:  # noqa: BLE001 - disk full, permissions, a vanished bucket
      raise self._save_failed(step, e) from e

  def _save_failed(self, step, e: Exception) -> WorkdirError:
    good = [s for s in self.all_steps() if s != step]
    kept = f"step {good[-1]} is intact" if good else "no earlier checkpoint exists"
    return WorkdirError(
      f"saving checkpoint {self.directory}/{step} failed ({type(e).__name__}: {e}); {kept}. "
      "Free disk space (or fix the path's permissions) and rerun the same command to resume."
    )

  def restore_meta(self, step: int | None = None) -> dict | None:
    """The metadata of `step` (default: the newest step whose metadata reads), or None."""
    if step is not None:
      return self._read_meta(step)
    for candidate in reversed(self.all_steps()):
      try:
        return self._read_meta(candidate)
      except _Damaged as e:
        log.warning("%s; trying the previous checkpoint", e)
    return None

  def _read_meta(self, step: int) -> dict:
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - orbax raises many types for a damaged directory
      raise _Damaged(self._damaged(step, e)) from e
    if not isinstance(out["meta"], dict) or "step" not in out["meta"]:
      raise _Damaged(self._damaged(step, ValueError("metadata is incomplete")))
    return out["meta"]

  def restore(self, abstract_state) -> tuple[int, object, dict] | None:
    """(step, state, meta) of the newest readable checkpoint, or None when there is none.

    A damaged checkpoint is skipped with a warning that names it; one that was written for
    another model raises at once (an older step would not fit either)."""
    for step in reversed(self.all_steps()):
      try:
        meta = self._read_meta(step)
        return step, self.restore_state(abstract_state, step), meta
      except _Damaged as e:
        log.warning("%s; resuming from the previous checkpoint instead", e)
    return None

  def restore_state(self, abstract_state, step: int | None = None):
    """Restores into the shapes, dtypes and shardings of `abstract_state`."""
    step = self.latest_step() if step is None else step
    try:
      out = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
      )
    except (ValueError, KeyError, TypeError) as e:
      if _unreadable(e):
        raise _Damaged(self._damaged(step, e)) from e
      raise CheckpointMismatchError(
        f"checkpoint {self.directory}/{step} does not match the model being built ({e}). "
        "Run with the config it was trained with, or start a fresh --workdir."
      ) from e
    except Exception as e:  # noqa: BLE001
      raise _Damaged(self._damaged(step, e)) from e
    check_shapes(out["state"], abstract_state, f"{self.directory}/{step}")
    return out["state"]

  def _damaged(self, step, e) -> str:
    return (
      f"checkpoint {self.directory}/{step} could not be read ({type(e).__name__}: "
      f"{str(e)[:300]}). It may be incomplete or corrupt: move that step's folder aside to "
      f"resume from an earlier one, or start a fresh --workdir."
    )

  def wait(self):
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - an async save that failed surfaces here
      raise self._save_failed(self.latest_step(), e) from e

  def close(self):
    try:
      self.wait()
    finally:
      self.manager.close()


class _Damaged(CheckpointMismatchError):
  """A checkpoint whose files cannot be read (as opposed to one of another model)."""


# TensorStore reports I/O and decoding failures as ValueError('<STATUS>: ...'); a model that
# does not fit the checkpoint fails Orbax's own tree and shape checks instead.
_IO_STATUS = re.compile(r"(DATA_LOSS|OUT_OF_RANGE|NOT_FOUND|UNKNOWN|INTERNAL|PERMISSION_DENIED):")


def _unreadable(e: Exception) -> bool:
  return isinstance(e, UnicodeDecodeError | json.JSONDecodeError) or bool(_IO_STATUS.match(str(e)))


def check_shapes(restored, abstract, where: str):
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
