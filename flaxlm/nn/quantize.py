"""Post-training weight-only quantization of any flaxlm model, by Qwix.

Every weight matrix of every family is a `nn.projection.Projection` kernel (one dot_general
on it; task heads and an untied LM head included), so one rule over the module paths that own
a kernel reaches them all, and nothing else (attention's own einsums stay float):

  int8  one int8 per weight, one f32 scale per output channel (symmetric absmax over the
        contracted input axes): 4x fewer weight bytes
  int4  int4 weights with an f32 scale per group of `INT4_GROUP` input rows: ~7x fewer

Qwix stores a quantized kernel as `WithAux(QArray(qvalue, scale))` in the parameter tree and
dequantizes it inside the dot_general (XLA fuses that into the matmul on GPU and TPU).
Embeddings, norms and biases stay float. Qwix is the `lora` extra: pip install 'flaxlm[lora]'.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import jax
import numpy as np
from flax import traverse_util

from flaxlm.errors import ConfigError
from flaxlm.nn import lora

MODES = ("int8", "int4")
INT4_GROUP = 128  # input rows per int4 scale (fewer if the input axis is shorter)


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ConfigError(f"--quantize={mode!r}; choose one of {list(MODES)} ('' = float weights)")


def projections(params: Mapping) -> str:
  """A regex matching exactly the module paths that own a kernel (Qwix's module_path)."""
  flat = traverse_util.flatten_dict(params)
  paths = sorted({"/".join(k[:-1]) for k in flat if k[-1] == "kernel"})
  return "|".join(re.escape(p) for p in paths)


def _rules(qwix, params: Mapping, mode: str) -> list:
  if mode == "int8":
    return [qwix.QtRule(module_path=projections(params), weight_qtype="int8")]
  # int4 groups along the input axis: one rule per group size, as a short input axis (a
  # tiny model's, or attention's out kernel over heads) holds fewer than INT4_GROUP rows.
  flat = traverse_util.flatten_dict(params)
  by_group: dict[int, list[str]] = {}
  for k, v in flat.items():
    if k[-1] == "kernel":
      group = int(np.gcd(INT4_GROUP, v.shape[0]))
      by_group.setdefault(group, []).append(re.escape("/".join(k[:-1])))
  return [
    qwix.QtRule(module_path="|".join(paths), weight_qtype="int4", tile_size=group)
    for group, paths in sorted(by_group.items())
  ]


def quantized_model(model, params: Mapping, mode: str):
  """`model` whose projections (those of `params`) compute with `mode` weights."""
  check_mode(mode)
  try:
    import qwix
  except ImportError:
    raise ConfigError(
      "--quantize needs Qwix: pip install 'flaxlm[lora]' (or pip install qwix)"
    ) from None
  provider = qwix.PtqProvider(_rules(qwix, params, mode))
  return qwix.quantize_model(model, provider, methods=lora.entry_methods(model))


def quantize(params, abstract_quantized):
  """The float `params` quantized into the layout of `abstract_quantized` (the quantized
  model's abstract parameters, which say how each kernel is quantized)."""
  import qwix

  return qwix.quantize_params(jax.tree.map(jax.numpy.asarray, params), abstract_quantized)


def weight_bytes(params) -> int:
  """Bytes of every array in the tree (int8 values, int4 packed two to a byte)."""
  total = 0
  for x in jax.tree.leaves(params):
    bits = 4 if "int4" in str(x.dtype) else 8 * np.dtype(x.dtype).itemsize
    total += x.size * bits // 8
  return total
