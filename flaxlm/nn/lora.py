"""LoRA: low-rank adapters over the projections of any flaxlm model, by Qwix.

Qwix (Google's JAX quantization and LoRA library) intercepts the `dot_general` of every
module whose path matches a regex. Every weight matrix of every transformer family goes
through `nn.projection.Projection` (one `dot_general` on a `kernel`), so one rule reaches them
all. Beside each matched `kernel` it adds

  kernel_lora_a  (d_in, r)   he-uniform, logical axes (the kernel's input axis, None)
  kernel_lora_b  (r, d_out)  zeros,      logical axes (None, the kernel's output axis)

and computes `x @ kernel + (x @ a @ b) * alpha / r` (rsLoRA: `alpha / sqrt(r)`). B starts at
zero, so an adapted model's first outputs are the base model's. The adapters carry the
kernel's logical axis names, so the rules table shards them like their kernels.

Qwix is an optional dependency: `pip install 'flaxlm[lora]'`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.linen import initializers

from flaxlm.errors import ConfigError
from flaxlm.nn import quantize

ADAPTERS = ("_lora_a", "_lora_b")  # Qwix's suffixes of a kernel's adapter pair
Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int = 0  # 0: off (full fine-tuning); r of every adapter pair
  alpha: float = 16.0  # the update is scaled by alpha / rank (rsLoRA: alpha / sqrt(rank))
  dropout: float = 0.0  # on the adapters' input; only 0 for now (see __post_init__)
  # Which projections get adapters: a regex over module paths, matched whole, e.g.
  # '.*/(query|value)' (attention q and v, the default, as peft's for BERT), '.*/attn/.*' (all
  # attention) or '.*/(query|key|value|out|wi|wi_up|wo)' (every linear layer of the blocks).
  targets: str = ".*/(query|value)"
  rslora: bool = False  # rank-stabilized scaling alpha / sqrt(rank)
  # QLoRA: the frozen base's kernels held as 'int8' (per output channel), 'int4' or 'nf4'
  # (scales per 128 input rows) and dequantized inside each matmul; '' = float.
  quantize_base: str = ""
  # Parameters trained in full beside the adapters: a regex over parameter paths ('/'-joined,
  # e.g. 'classifier/.*'); '' = the task head (a new head must learn from scratch).
  modules_to_save: str = ""

  def __post_init__(self):
    if self.rank < 0:
      raise ConfigError(f"lora.rank={self.rank}; use 0 (off) or a positive rank such as 8")
    if self.rank and self.alpha <= 0:
      raise ConfigError(f"lora.alpha={self.alpha}; use a positive scale such as 2 x rank")
    if self.dropout:
      raise ConfigError(
        f"lora.dropout={self.dropout}: Qwix applies LoRA dropout at evaluation too, so flaxlm "
        "does not offer it yet; set --config.lora.dropout=0 (the task's dropout_rate still "
        "regularizes the head)"
      )
    if self.quantize_base not in ("", "int8", "int4", "nf4"):
      raise ConfigError(
        f"lora.quantize_base={self.quantize_base!r}; choose 'int8', 'int4' or 'nf4' ('' = float)"
      )
    if self.quantize_base and not self.rank:
      raise ConfigError("lora.quantize_base (QLoRA) needs adapters: set lora.rank, e.g. 8")
    for key in ("targets", "modules_to_save"):
      try:
        re.compile(getattr(self, key))
      except re.error as e:
        raise ConfigError(f"lora.{key}={getattr(self, key)!r} is not a regex: {e}") from None

  @property
  def scale(self) -> float:
    return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def is_adapter(path: Path) -> bool:
  return path[-1].endswith(ADAPTERS)


def _in_f32(initializer):
  return lambda key, shape, dtype=None: initializer(key, shape, jnp.float32)


# Adapters are trained in f32 whatever the model computes in: Qwix would create them in the
# kernel's dtype, which under bf16 compute is the bf16 copy the projection hands dot_general
# (a QLoRA base's scales), and AdamW's moments and updates of bf16 adapters lose the small steps.
F32_ADAPTERS = dict(
  lora_a_initializer=_in_f32(initializers.he_uniform()),
  lora_b_initializer=_in_f32(initializers.zeros),
)


def with_adapters(model, config: LoraConfig, kernel_shapes=None, is_trained=None):
  """`model` with an adapter pair beside every kernel that `config.targets` matches; with
  `quantize_base` (QLoRA), every frozen kernel held quantized (`kernel_shapes`: the plain
  model's parameter shapes; `is_trained(path)`: the saved modules, kept float)."""
  try:
    import qwix
  except ImportError:
    raise ConfigError(
      "lora.rank > 0 needs Qwix: pip install 'flaxlm[lora]' (or pip install qwix)"
    ) from None
  _transpose_names_before_values(qwix)
  # Qwix scales by alpha / rank; rsLoRA's alpha / sqrt(rank) is that with alpha * sqrt(rank).
  alpha = config.scale * config.rank
  provider = qwix.LoraProvider(module_path=config.targets, rank=config.rank, alpha=alpha,
                               **F32_ADAPTERS)  # fmt: skip
  if config.quantize_base:
    provider = qwix.LoraProvider(_qlora_rules(qwix, config, alpha, kernel_shapes, is_trained))
  return qwix.apply_lora_to_model(model, provider, methods=quantize.entry_methods(model))


def _qlora_rules(qwix, config: LoraConfig, alpha: float, kernel_shapes, is_trained) -> list:
  """QLoRA: the targeted kernels quantized under their adapters, the other frozen kernels
  quantized alone (Qwix takes a module's first matching rule); trained ones (the head) stay
  float."""
  if kernel_shapes is None:
    raise ValueError("QLoRA needs the model's kernel shapes (to group 4-bit scales)")
  mode = config.quantize_base
  paths = {p for ps in quantize.kernel_groups(kernel_shapes, mode).values() for p in ps}
  targeted = {p for p in paths if re.fullmatch(config.targets, p)}
  frozen_only = {p for p in paths - targeted if not is_trained((*p.split("/"), "kernel"))}
  rules = []
  for group, ps in quantize.kernel_groups(kernel_shapes, mode, targeted).items():
    rules.append(qwix.LoraRule(module_path=quantize.pattern(ps), rank=config.rank, alpha=alpha,
                               weight_qtype=mode, tile_size=group, **F32_ADAPTERS))  # fmt: skip
  for group, ps in quantize.kernel_groups(kernel_shapes, mode, frozen_only).items():
    rules.append(qwix.QtRule(module_path=quantize.pattern(ps), weight_qtype=mode, tile_size=group))
  return rules


def _transpose_names_before_values(qwix) -> None:
  """Qwix 0.1.8 boxes a new adapter by putting its value into the kernel's box, then
  rewriting the box's logical names; under a mesh, Flax constrains the 2-D adapter with the
  kernel's names in between (3-D for attention's (D, N, H) kernels) and fails. Box value and
  names together instead. Patched once, in Qwix's LoRA module only."""
  from flax import linen as nn
  from qwix._src.providers import lora as qwix_lora

  util = qwix_lora.flax_util
  if getattr(util, "flaxlm_names_with_values", False):
    return
  update_boxed = util.update_boxed

  def names_with_values(boxed, *, value=None, transpose=None, **kw):
    if isinstance(boxed, nn.LogicallyPartitioned) and value is not None and transpose:
      names = tuple(None if t is None else boxed.names[t] for t in transpose)
      return boxed.replace(value=value, names=names)
    return update_boxed(boxed, value=value, transpose=transpose, **kw)

  patched = type(util)(util.__name__)
  patched.__dict__.update(util.__dict__, update_boxed=names_with_values)
  patched.flaxlm_names_with_values = True
  qwix_lora.flax_util = patched


def frozen(config: LoraConfig, is_head) -> callable:
  """The frozen-parameter predicate of a LoRA run (what `Trainable` takes, as
  `Layout.frozen` is for freeze_backbone): all but the adapters and the saved modules
  (`is_head` when `modules_to_save` is '')."""
  saved = re.compile(config.modules_to_save) if config.modules_to_save else None

  def is_frozen(path: Path) -> bool:
    if is_adapter(path):
      return False
    return not (saved.fullmatch("/".join(path)) if saved else is_head(path))

  return is_frozen


def check_targets(params: Mapping, config: LoraConfig) -> None:
  """Refuses a `targets` regex that matched no projection, naming some that exist."""
  flat = traverse_util.flatten_dict(params)
  if any(is_adapter(k) for k in flat):
    return
  kernels = sorted({"/".join(k[:-1]) for k in flat if k[-1] == "kernel"})
  shown = ", ".join(kernels[:6]) + (" ..." if len(kernels) > 6 else "")
  raise ConfigError(
    f"lora.targets={config.targets!r} matches no projection of this model; its projections "
    f"are {shown} (the regex must match a whole path)"
  )


def merged(params: Mapping, config: LoraConfig) -> dict:
  """The same tree with every adapter pair folded into its kernel (kernel + a @ b * scale, in
  the kernel's shape) and the adapters dropped: an ordinary model's parameters."""
  flat = dict(traverse_util.flatten_dict(quantize.dequantized(params)))  # a QLoRA base: float
  for path in [k for k in flat if k[-1].endswith(ADAPTERS[0])]:
    name = path[-1][: -len(ADAPTERS[0])]
    a, b = flat.pop(path), flat.pop((*path[:-1], name + ADAPTERS[1]))
    kernel = flat[(*path[:-1], name)]
    delta = (np.asarray(a, np.float32) @ np.asarray(b, np.float32)) * config.scale
    flat[(*path[:-1], name)] = (
      np.asarray(kernel, np.float32) + delta.reshape(kernel.shape)
    ).astype(kernel.dtype)
  return traverse_util.unflatten_dict(flat)
