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

import math
import re
from collections.abc import Mapping

import jax
import numpy as np
from flax import traverse_util

from flaxlm.errors import ConfigError

MODES = ("int8", "int4")
INT4_GROUP = 128  # input rows per int4 scale (fewer if the input axis is shorter)


def entry_methods(model) -> tuple[str, ...]:
  """The methods tasks and decoders call on a model (`apply(..., method=...)`): Qwix acts
  only inside the ones it wraps, so an encoder-decoder's `encode` and `decode` (generation)
  must be wrapped beside `__call__` (training)."""
  return tuple(m for m in ("__call__", "encode", "decode") if hasattr(model, m))


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ConfigError(f"--quantize={mode!r}; choose one of {list(MODES)} ('' = float weights)")


def kernel_groups(params: Mapping, mode: str, paths=None) -> dict[int | None, list[str]]:
  """{int4/nf4 group size (None: one scale per output channel, int8): [module paths]} of the
  kernels of `params` (arrays or shapes), those among `paths` if given. 4-bit weights get a
  scale per INT4_GROUP input rows, or per gcd(INT4_GROUP, rows) for a shorter input axis."""
  out: dict[int | None, list[str]] = {}
  for k, v in traverse_util.flatten_dict(params).items():
    path = "/".join(k[:-1])
    if k[-1] != "kernel" or (paths is not None and path not in paths):
      continue
    group = None if mode == "int8" else int(np.gcd(INT4_GROUP, v.shape[0]))
    out.setdefault(group, []).append(path)
  return out


def pattern(paths) -> str:
  """A regex matching exactly `paths` (Qwix's module_path); one that matches nothing if none."""
  return "|".join(re.escape(p) for p in sorted(paths)) or "(?!)"


def _rules(qwix, params: Mapping, mode: str) -> list:
  return [
    qwix.QtRule(module_path=pattern(paths), weight_qtype=mode, tile_size=group)
    for group, paths in sorted(kernel_groups(params, mode).items(), key=str)
  ]


def is_quantized(x) -> bool:
  """A Qwix quantized kernel (`WithAux(QArray)`) rather than an array."""
  return hasattr(x, "how") and hasattr(x, "array")


def like(template, value):
  """Float `value` in the form of the parameter `template`: quantized as it is (a QLoRA
  base's kernel, from a pretrained checkpoint), or cast to its dtype."""
  if not is_quantized(template):
    return value.astype(template.dtype)
  import qwix

  # from the dtype the init quantized (the compute dtype's copy), so the scales' dtype holds
  value = value.astype(template.array.scale.dtype)
  return qwix.quantize_params({"w": value}, {"w": template})["w"]


def dequantized(params):
  """The tree with every quantized kernel back in float (export, merging adapters)."""
  if not any(is_quantized(x) for x in jax.tree.leaves(params, is_leaf=is_quantized)):
    return params
  import qwix

  return jax.tree.map(
    lambda x: qwix.dequantize(x.array) if is_quantized(x) else x, params, is_leaf=is_quantized
  )


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
  return qwix.quantize_model(model, provider, methods=entry_methods(model))


def quantize(params, abstract_quantized):
  """The float `params` quantized into the layout of `abstract_quantized` (the quantized
  model's abstract parameters, which say how each kernel is quantized)."""
  import qwix

  return qwix.quantize_params(jax.tree.map(jax.numpy.asarray, params), abstract_quantized)


def weight_bytes(params, shape_of=None) -> int:
  """Bytes of every array in the tree (int8 values, int4 packed two to a byte); `shape_of(leaf)`
  gives the shape counted (default the whole array's; e.g. one device's shard)."""
  total = 0
  for x in jax.tree.leaves(params):
    bits = 4 if "int4" in str(x.dtype) else 8 * np.dtype(x.dtype).itemsize
    total += math.prod(shape_of(x) if shape_of else x.shape) * bits // 8
  return total
