"""A Trainable's model with weight-only quantized projections (`flaxlm.nn.quantize`), laid
out on the same mesh: what evaluation, prediction and decoding take for `--quantize`."""

from __future__ import annotations

import dataclasses

import jax
import optax

from flaxlm.nn import quantize
from flaxlm.train.steps import ModelInit, Trainable


def quantized(trainable: Trainable, params, mode: str, module=None) -> tuple[Trainable, object]:
  """(a Trainable of the quantized model, its quantized params) of float `params`. `module`
  replaces the trainable's own module (e.g. a LoRA model's base, for merged params). No
  optimizer: the quantized model only runs forward."""
  init = trainable.init_params
  if not isinstance(init, ModelInit):
    raise TypeError("quantizing needs a Trainable whose init_params is a steps.ModelInit")
  qmodel = quantize.quantized_model(module or init.model, params, mode)
  q = dataclasses.replace(
    trainable,
    model=qmodel,
    init_params=ModelInit(qmodel, init.inputs),
    optimizer=optax.identity(),
    frozen=lambda path: True,
    saves_frozen=True,
  )
  qparams = quantize.quantize(params, q.abstract_state.params)
  return q, jax.device_put(qparams, q.param_shardings)
