"""Knowledge distillation: a student fine-tunes against a frozen teacher's class distributions.

The loss (Hinton et al. 2015) is

  alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * task loss

per example (classification) or per tagged token (token classification), summed with the task
loss's own weights. The teacher is a fine-tuned workdir of the same task and labels; its
parameters sit in the train state under 'teacher', frozen (no gradient, no optimizer state),
sharded by the same rules table, and its forward pass runs inside the jitted step. Checkpoints
hold the student alone and record the teacher's fingerprint (`frozen_base`), so a resume
checks that the teacher is the one the student learned from, and `evaluate`, `predict` and
export read a distilled workdir as any other.

The student is either the teacher cut to `student_layers` blocks, its layers k-1, 2k-1, ...
(k = teacher layers / student layers) and everything else the teacher's (DistilBERT's init,
Sanh et al. 2019), or any model of its own (`init_from`, or fresh) whose tokenizer and labels
are the teacher's: width, depth and family may differ.

Why in the step rather than cached logits: a run of about one epoch (the shipped configs)
calls the teacher once per training example either way, and the step keeps padding-free
rows, dropout and data order as they are; a cache would pay off from the second epoch.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
from flax import traverse_util

from flaxlm.config.finetuning import DistillConfig
from flaxlm.errors import ConfigError

TEACHER = "teacher"  # the teacher's top-level key in the train state's parameters


def check_pair(task, tokenizer, labels, teacher, c: DistillConfig | None = None) -> None:
  """The student reads the teacher's inputs and predicts its classes, or a one-line error."""
  if not task.distillable():
    raise ConfigError(
      f"distillation matches class distributions; task {task.name!r} (as configured) has none "
      "to match: distill classification (single_label) or token_classification"
    )
  if teacher.task.name != task.name or list(teacher.task.labels or []) != list(labels or []):
    raise ConfigError(
      f"the teacher ({teacher.task.name}, labels {teacher.task.labels}) and the student "
      f"({task.name}, labels {labels}) must share task and labels"
    )
  if c is not None and c.hidden_weight:
    s, t = task.model_config, teacher.model_config
    if getattr(s, "embed_dim", None) != getattr(t, "embed_dim", 0) or t.num_layers % s.num_layers:
      raise ConfigError(
        "distill.hidden_weight matches block outputs: the student needs the teacher's width "
        f"and a depth dividing its {t.num_layers} blocks; set distill.hidden_weight=0"
      )
    if getattr(s, "scan_layers", False) or getattr(t, "scan_layers", False):
      raise ConfigError(
        "distill.hidden_weight reads each block's output: set model.scan_layers=False"
      )
  if teacher.tokenizer.to_json() != tokenizer.to_json():
    raise ConfigError(
      "the teacher and the student tokenize differently; give the student the teacher's "
      "tokenizer (distill.student_layers, or an init_from with the teacher's vocabulary)"
    )


def student_config(teacher, layers: int):
  """The teacher's architecture with `layers` blocks."""
  have = teacher.model_config.num_layers
  if layers > have or have % layers:
    raise ConfigError(
      f"distill.student_layers={layers} does not divide the teacher's {have} layers "
      f"(the student takes every k-th one); use a divisor of {have}"
    )
  return dataclasses.replace(teacher.model_config, num_layers=layers)


def chosen_layers(teacher_layers: int, student_layers: int) -> list[int]:
  """The teacher blocks a student of `student_layers` starts from: k-1, 2k-1, ..., the last."""
  k = teacher_layers // student_layers
  return [k * (i + 1) - 1 for i in range(student_layers)]


def student_init(teacher_params, teacher_layers: int, student_layers: int) -> dict:
  """{path: array} of the student: the teacher's chosen blocks renumbered (a scanned stack
  sliced), every other parameter (embeddings, pooler, head) as it is."""
  chosen = chosen_layers(teacher_layers, student_layers)
  out = {}
  for path, value in traverse_util.flatten_dict(teacher_params).items():
    named = [i for i, p in enumerate(path) if re.fullmatch(r"layers_\d+", p)]
    if named:
      layer = int(path[named[0]].split("_")[1])
      if layer in chosen:
        renamed = f"layers_{chosen.index(layer)}"
        out[(*path[: named[0]], renamed, *path[named[0] + 1 :])] = value
    elif "layers" in path:  # nn.scan's stack: the blocks along the leading axis
      out[path] = value[jnp.asarray(chosen)]
    else:
      out[path] = value
  return out


def teacher_overrides(teacher) -> dict:
  """{('teacher', *path): array}: the teacher's weights in the train state."""
  flat = traverse_util.flatten_dict(teacher.params)
  return {(TEACHER, *path): value for path, value in flat.items()}


@dataclasses.dataclass(frozen=True)
class PairInit:
  """`Trainable.init_params` of student and teacher: {**student's tree, 'teacher': teacher's}."""

  student: object  # steps.ModelInit
  teacher: object

  def __call__(self, rng):
    return {**self.student(rng), TEACHER: self.teacher(rng)}


def _is_block(module, method: str) -> bool:
  """capture_intermediates' filter: the output of every transformer block ('layers_{i}')."""
  return method == "__call__" and re.fullmatch(r"layers_\d+", module.name or "") is not None


def block_outputs(intermediates) -> dict[int, jax.Array]:
  """{block index: its output (B, T, D)} of captured intermediates (a block returns (x, None))."""
  out = {}
  for path, value in traverse_util.flatten_dict(intermediates).items():
    if path[-1] == "__call__" and re.fullmatch(r"layers_\d+", path[-2]):
      out[int(path[-2].split("_")[1])] = value[0][0]
  return out


def hidden_mse(student: dict, teacher: dict, chosen: list[int], tokens) -> jax.Array:
  """Mean over the student's blocks of the mean squared difference of block i's output and
  the teacher's block chosen[i], over the real tokens (`tokens` (B, T) > 0)."""
  mask = (tokens > 0).astype(jnp.float32)[..., None]
  count = jnp.maximum(jnp.sum(mask) * student[0].shape[-1], 1.0)
  errors = [
    jnp.sum(jnp.square(student[i].astype(jnp.float32) - teacher[t].astype(jnp.float32)) * mask)
    / count
    for i, t in enumerate(chosen)
  ]
  return sum(errors) / len(errors)


def soft_kl(student_logits, teacher_logits, temperature: float) -> jax.Array:
  """KL(teacher || student) of the temperature-softened distributions, per position (..., C)."""
  t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  return jnp.sum(jnp.exp(t) * (t - s), axis=-1)


def loss(task, teacher_model, c: DistillConfig, chosen: list[int] | None = None):
  """The train step's loss (steps.Trainable.loss) of a student beside its teacher: the task's
  loss at evaluation, the distillation loss in training (`chosen`: the teacher block each
  student block's output is matched to, with distill.hidden_weight)."""
  capture = _is_block if c.hidden_weight else None

  def distill_loss(model, params, batch, rng, deterministic, loss_config):
    student = {k: v for k, v in params.items() if k != TEACHER}
    if deterministic:
      return task.loss(model, student, batch, rng, True, loss_config)
    logits = task.forward(model, student, batch, rng, False, capture)
    teacher = task.forward(teacher_model, params[TEACHER], batch, None, True, capture)
    if capture:
      (logits, s_hidden), (teacher, t_hidden) = logits, teacher
    sums = dict(task.loss_from_logits(logits, batch, loss_config))
    teacher = jax.lax.stop_gradient(teacher).astype(jnp.float32)
    weights = task.soft_target_weights(batch)
    kl = soft_kl(logits.astype(jnp.float32), teacher, c.temperature)
    soft = c.temperature**2 * jnp.sum(kl * weights)
    sums["distill_sum"] = soft
    sums["loss_sum"] = c.alpha * soft + (1.0 - c.alpha) * sums["loss_sum"]
    if capture:  # per token, scaled to the loss's sum over examples
      t_hidden = jax.lax.stop_gradient(block_outputs(t_hidden))
      mse = hidden_mse(block_outputs(s_hidden), t_hidden, chosen, batch["segment_ids"])
      sums["loss_sum"] = sums["loss_sum"] + c.hidden_weight * mse * sums["weight_sum"]
    return sums

  return distill_loss
