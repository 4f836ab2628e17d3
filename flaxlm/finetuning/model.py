"""The model a fine-tuning run trains and `load` returns: the task's model on its backbone,
with LoRA adapters, pruning masks or a teacher beside it as the config asks (`build`), and the
`Model` bundle of task, trainable, tokenizer and parameters."""

from __future__ import annotations

import dataclasses

import jax

from flaxlm.config.finetuning import FinetuneConfig
from flaxlm.finetuning import distill
from flaxlm.models import registry
from flaxlm.nn import lora, pruning, sharding
from flaxlm.nn.lora import LoraConfig
from flaxlm.train import validation
from flaxlm.train.steps import ModelInit, Trainable


@dataclasses.dataclass
class Model:
  """A task model ready to train or predict: what `flaxlm.load` returns."""

  task: object  # flaxlm.tasks.Task, bound to its labels and tokenizer
  trainable: Trainable
  tokenizer: object
  family: str
  model_config: object
  params: object = None
  lora: LoraConfig = LoraConfig()  # rank > 0: `params` hold adapters (lora.merged folds them)
  init_from: str = ""  # the base it was fine-tuned from

  @property
  def model(self):
    return self.trainable.model


def build(task, family: str, model_config, ft: FinetuneConfig, mesh, teacher=None) -> Trainable:
  """The task model's Trainable on `mesh`: adapters (LoRA), pruning masks, and a `teacher`
  (a fine-tuned Model) in the step when the run distills, as `ft` asks."""
  model = task.model(registry.build_model(family, model_config))
  frozen = task.layout.frozen if ft.freeze_backbone else None
  example = task.init_batch(sharding.data_parallel_size(mesh))
  if ft.lora.rank:  # the base frozen: only adapters and the saved modules train
    frozen = lora.frozen(ft.lora, task.layout.is_head)
    shapes = None
    if ft.lora.quantize_base:  # QLoRA groups 4-bit scales by each kernel's input rows
      shapes = jax.eval_shape(ModelInit(model, tuple(example)), jax.random.PRNGKey(0))
      shapes = sharding.strip_axes(shapes)
    model = lora.with_adapters(model, ft.lora, shapes, lambda path: not frozen(path))
  prune = ft.prune.resolved(ft.num_train_steps)
  masks = None
  if prune.method:  # the last link of the optimizer chain holds the masks (nn/pruning.py)
    masks = lambda boxed: pruning.prune_updates(
      prune, pruning.targets(prune, boxed, task.layout.is_head)
    )
  init, loss = ModelInit(model, tuple(example)), task.loss
  distilling = teacher is not None and ft.distill.in_step
  if distilling:  # the teacher frozen beside the student, in the step (finetuning/distill.py)
    teacher_example = teacher.task.init_batch(sharding.data_parallel_size(mesh))
    init = distill.PairInit(init, ModelInit(teacher.trainable.model, tuple(teacher_example)))
    chosen = None
    if ft.distill.hidden_weight:  # check_pair made sure the depths divide
      chosen = distill.chosen_layers(teacher.model_config.num_layers, model_config.num_layers)
    loss = distill.loss(task, teacher.trainable.model, ft.distill, chosen)
    student_frozen = frozen or (lambda path: False)
    frozen = lambda path: path[0] == distill.TEACHER or student_frozen(path)
  trainable = Trainable.with_adamw(
    model,
    ft.optim,
    mesh,
    sharding.rules_from_config(ft.logical_axis_rules),
    loss,
    ft.step,
    init,
    frozen=frozen,
    # a LoRA checkpoint names its base, a distilled one its teacher (frozen_base)
    saves_frozen=not ft.lora.rank and not distilling,
    last=masks,
  )
  if ft.lora.rank:
    lora.check_targets(trainable.abstract_state.params, ft.lora)
  elif ft.freeze_backbone:
    task.layout.check_freezable(trainable.abstract_state.params, task.name, family)
  validation.check_divisible(trainable)
  return trainable
