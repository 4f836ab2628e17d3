"""The frozen base of a LoRA run: named in its checkpoints, not stored in them.

A LoRA run trains its adapters and saved modules (the head) and nothing else, so its
checkpoints hold only those (`Trainable.saves_frozen=False`): a MiniLM LoRA checkpoint is a
few MB where the full model's is ~90 MB, and a 7B base is not copied into every step folder.
The frozen parameters are what the run started from — `init_from`'s backbone over a seeded
random init — so resuming, `evaluate`, `predict`, `generate.py` and export rebuild them from
the `init_from` and `seed` the checkpoint records. The checkpoint also records a fingerprint of
those parameters (the sum of their magnitudes); a base that has changed since (a pretraining
run that went on, another folder at the same path) fails with both figures instead of pairing
adapters with weights they were not trained on.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from flaxlm.errors import CheckpointMismatchError
from flaxlm.pretraining import transfer
from flaxlm.train.checkpoint import Checkpointer
from flaxlm.train.steps import Trainable, split_params
from flaxlm.workdir import Workdir

# f32 sums of the same values differ in reduction order across meshes by ~1e-7 relative; any
# other weights differ by far more.
_TOLERANCE = 1e-5


def fingerprint(trainable: Trainable, params) -> float:
  """The sum of |w| over the frozen parameters of `params`."""
  frozen = jax.tree.leaves(split_params(params, trainable.frozen_paths)[1])
  total = jax.jit(lambda leaves: sum(jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in leaves))
  with trainable.context():
    return float(total(frozen)) if frozen else 0.0


def record(trainable: Trainable, params, init_from: str, seed: int) -> dict:
  """What a checkpoint says of its base (meta['base'])."""
  return {"init_from": init_from, "seed": seed, "fingerprint": fingerprint(trainable, params)}


def check(saved: dict, rebuilt: dict, where) -> None:
  a, b = saved["fingerprint"], rebuilt["fingerprint"]
  if not math.isclose(a, b, rel_tol=_TOLERANCE, abs_tol=1e-6):
    source = saved["init_from"] or f"a random init (seed {saved['seed']})"
    raise CheckpointMismatchError(
      f"{where} holds parameters trained beside {source} (frozen), whose weights have changed since "
      f"(fingerprint {b:.8g}, trained on {a:.8g}); restore the base it was trained on "
      "(the same init_from folder and step) or fine-tune again"
    )


def rebuild(trainable: Trainable, saved: dict, layout, where):
  """The whole tree whose frozen parameters `saved` (meta['base']) names: init_from's
  backbone over the seeded init, checked against the recorded fingerprint."""
  overrides = None
  if saved["init_from"]:
    pretrained = transfer.load(saved["init_from"], trainable.mesh)
    overrides = transfer.backbone_overrides(trainable.abstract_state.params, pretrained, layout)
  params = trainable.init_state(saved["seed"], overrides).params
  check(saved, record(trainable, params, saved["init_from"], saved["seed"]), where)
  return params


# --- checkpoints without their base ---------------------------------------------------------


def named(meta: dict | None) -> dict | None:
  """What a checkpoint records of the frozen parameters it leaves out: a LoRA run's base
  (meta['base']) or a distilled student's teacher (meta['teacher']); None for the others."""
  return (meta or {}).get("base") or (meta or {}).get("teacher")


def abstract(trainable: Trainable, meta: dict | None):
  """The abstract state a checkpoint with `meta` holds: without the frozen parameters when
  it names them, whole otherwise (every run but LoRA and distillation, and LoRA runs before
  2026-12-07)."""
  return trainable.abstract_checkpoint if named(meta) else trainable.abstract_state


def completed(trainable: Trainable, restored, frozen_from, rebuilt: dict):
  """`restored` (step, state, meta) with its frozen parameters taken from `frozen_from`, once
  the base they came from is checked against what the checkpoint recorded."""
  step, state, meta = restored
  if not named(meta):
    return restored
  check(named(meta), rebuilt, f"checkpoint step {step}")
  return step, state.replace(params=trainable.with_frozen(state.params, frozen_from)), meta


def restore_params(directory, trainable: Trainable, frozen_from, whole_state: bool = False):
  """(params, meta) of the newest checkpoint in `directory` (a best/ folder; `whole_state`:
  a checkpoints/ folder) or None; a checkpoint that names its base gets its frozen
  parameters from `frozen_from(meta)`."""
  if not Workdir(directory).path.exists():
    return None
  ckpt = Checkpointer(directory, async_save=False, create=False)
  try:
    meta = ckpt.restore_meta()
    state = abstract(trainable, meta)
    restored = ckpt.restore(state if whole_state else {"params": state.params})
  finally:
    ckpt.close()
  if restored is None:
    return None
  step, tree, meta = restored
  params = tree.params if whole_state else tree["params"]
  if named(meta) and not trainable.saves_frozen:  # a model that takes them: from frozen_from
    params = trainable.with_frozen(params, frozen_from(meta))
  return params, meta
