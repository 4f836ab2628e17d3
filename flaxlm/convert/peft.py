"""LoRA adapters in Hugging Face peft's format (`adapter_config.json` +
`adapter_model.safetensors`): written from a flaxlm LoRA model, and read back.

flaxlm's adapter pair on a kernel (in..., out...) is a (d_in, r) and b (r, d_out) over the
kernel's 2-D view (d_in, d_out) (`flaxlm.nn.lora`); peft's on a Linear is lora_A (r, in) and
lora_B (out, r), with the same scale alpha / r (rsLoRA: alpha / sqrt(r)). So A = a.T and
B = b.T wherever the exporter writes the kernel's 2-D view as that Linear's weight (transposed
for nn.Linear, as is for GPT-2's Conv1D).

Which Linear that is, each family's exporter already knows, so there is no second table of
Hugging Face names here: a probe gives every parameter asked about distinct random values,
exports the model in memory, and finds each parameter in the one tensor that holds exactly its
values in one of those two layouts. A kernel that lands in a fused Linear (GPT-2's c_attn holds
q, k and v) or in a sliced one has no peft counterpart and is refused by name. Saved modules
(the task head) are found the same way and written whole under peft's names.
"""

from __future__ import annotations

import json
import pathlib
import re

import jax
import numpy as np
from flax import traverse_util

from flaxlm.convert import files
from flaxlm.convert.api import hf_tensors
from flaxlm.errors import CheckpointMismatchError, ConfigError, DataNotFoundError
from flaxlm.nn import lora, quantize

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."  # peft's wrapper around the transformers model
# flaxlm head kind -> peft task_type (None: the family's LM head)
TASK_TYPES = {"sequence": "SEQ_CLS", "token": "TOKEN_CLS", "span": "QUESTION_ANS"}
Path = tuple[str, ...]


def probe(family, model_config, shapes: dict[Path, tuple], asked, tokenizer=None, task=None):
  """{path: (Hugging Face tensor name, 'linear' | 'same')} for each path of `asked` that the
  exporter writes whole into one tensor: 'linear' = the transpose of its 2-D view (nn.Linear's
  (out, in)), 'same' = its values in its own order (a bias, a norm, a Conv1D weight)."""
  rng = np.random.default_rng(0)
  values = {
    k: rng.standard_normal(s).astype(np.float32) if k in asked else np.ones(s, np.float32)
    for k, s in shapes.items()
  }
  _, tensors, _ = hf_tensors(
    family, model_config, traverse_util.unflatten_dict(values), tokenizer, task
  )
  by_size: dict[int, list[str]] = {}
  for name, t in tensors.items():
    by_size.setdefault(t.size, []).append(name)
  found = {}
  for k in asked:
    v = values[k]
    for name in by_size.get(v.size, []):
      t = tensors[name]
      if np.array_equal(t, v.reshape(t.shape)):
        found[k] = (name, "same")
      elif t.ndim == 2 and np.array_equal(t, v.reshape(t.shape[1], t.shape[0]).T):
        found[k] = (name, "linear")
    # else: fused with others, sliced, or not exported
  return found


def _module(name: str) -> str:
  return name.rsplit(".", 1)[0]


def export_adapters(
  directory, family, model_config, params, config: lora.LoraConfig, trained, tokenizer=None,
  task=None, base: str = "",
) -> dict:  # fmt: skip
  """Writes peft's adapter folder for a LoRA model's `params`: its adapter pairs and the
  trained parameters (`trained(path)`: the saved modules) whole. `task`: the head kind as
  `export_hf` takes it; `base`: the base model's name or folder, recorded for peft users.
  Returns the adapter config."""
  flat = traverse_util.flatten_dict(jax.device_get(quantize.dequantized(params)))  # QLoRA
  pairs = {
    (*k[:-1], k[-1][: -len(lora.ADAPTERS[0])]): (flat[k], flat[(*k[:-1], k[-1][:-1] + "b")])
    for k in flat
    if k[-1].endswith(lora.ADAPTERS[0])
  }
  base_flat = {k: np.asarray(v, np.float32) for k, v in flat.items() if not lora.is_adapter(k)}
  saved = sorted(k for k in base_flat if trained(k))
  shapes = {k: v.shape for k, v in base_flat.items()}
  where = probe(family, model_config, shapes, set(pairs) | set(saved), tokenizer, task)
  tensors, targets, modules, conv = {}, set(), set(), False
  for k, (a, b) in sorted(pairs.items()):
    if k not in where:
      raise ConfigError(
        f"LoRA on {'/'.join(k[:-1])} has no peft counterpart: the Hugging Face model fuses "
        "that projection with others (GPT-2's c_attn holds query, key and value); export the "
        "merged model instead, or train with lora.targets that leave it out"
      )
    name, layout = where[k]
    conv |= layout == "same"  # GPT-2's Conv1D: peft's fan_in_fan_out
    targets.add(_module(name))
    tensors[f"{PREFIX}{_module(name)}.lora_A.weight"] = np.asarray(a, np.float32).T
    tensors[f"{PREFIX}{_module(name)}.lora_B.weight"] = np.asarray(b, np.float32).T
  if saved:
    _, real, _ = hf_tensors(family, model_config, traverse_util.unflatten_dict(base_flat),
                            tokenizer, task)  # fmt: skip
    for k in saved:
      if k not in where:
        raise ConfigError(f"the trained parameter {'/'.join(k)} has no peft counterpart")
      tensors[PREFIX + where[k][0]] = real[where[k][0]]
      modules.add(_module(where[k][0]))
  is_encdec = family in ("encdec", "t5")
  adapter_config = {
    "peft_type": "LORA",
    "task_type": TASK_TYPES.get(task, "SEQ_2_SEQ_LM" if is_encdec else "CAUSAL_LM"),
    "base_model_name_or_path": base or None,
    "r": config.rank,
    "lora_alpha": config.alpha,
    "use_rslora": config.rslora,
    "lora_dropout": config.dropout,
    "target_modules": sorted(targets),
    "modules_to_save": sorted(modules) or None,
    "fan_in_fan_out": conv,
    "bias": "none",
    "inference_mode": True,
    "init_lora_weights": True,
  }
  files.write_model(pathlib.Path(directory), adapter_config, tensors, names=(CONFIG, WEIGHTS))
  return adapter_config


# Settings of peft's LoRA that flaxlm's adapters do not have, with the value that means "off".
_UNSUPPORTED = {"use_dora": False, "rank_pattern": {}, "alpha_pattern": {}, "lora_bias": False,
                "layers_to_transform": None, "target_parameters": None}  # fmt: skip


def read_adapters(directory, family, model_config, shapes, tokenizer=None, task=None):
  """(LoraConfig, {flaxlm path: array}) of a peft adapter folder for the model whose
  parameter shapes (without adapters) are `shapes`: the adapter pairs and the saved modules,
  ready to replace those parameters of a freshly built LoRA model."""
  directory = pathlib.Path(directory)
  if not (directory / CONFIG).exists() or not (directory / WEIGHTS).exists():
    raise DataNotFoundError(
      f"adapters_from: {directory} holds no peft adapters ({CONFIG} + {WEIGHTS}); write "
      "them with: python -m flaxlm.convert export <lora workdir> <dir> --adapters"
    )
  cfg = json.loads((directory / CONFIG).read_text())
  if cfg.get("peft_type", "LORA") != "LORA":
    raise ConfigError(f"{directory / CONFIG}: peft_type={cfg['peft_type']!r}; flaxlm reads LORA")
  for key, off in _UNSUPPORTED.items():
    if cfg.get(key, off) not in (off, None):
      raise ConfigError(f"{directory / CONFIG}: {key}={cfg[key]!r} is not supported by flaxlm")
  tensors = files.read_tensors(directory / WEIGHTS)
  where = probe(family, model_config, shapes, set(shapes), tokenizer, task)
  by_name = {name: (k, layout) for k, (name, layout) in where.items()}
  out, targets, saved = {}, [], []
  for key, t in tensors.items():
    name = key.removeprefix(PREFIX).replace(".default.", ".")
    if ".lora_A." in name or ".lora_B." in name:
      module, side = name.split(".lora_")[0], name.split(".lora_")[1][0]
      if f"{module}.weight" not in by_name:
        raise CheckpointMismatchError(f"{key}: this model has no projection {module!r}")
      path = by_name[f"{module}.weight"][0]
      out[(*path[:-1], path[-1] + ("_lora_a" if side == "A" else "_lora_b"))] = t.T
      targets.append(path[:-1])
      continue
    if name not in by_name:
      raise CheckpointMismatchError(f"{key}: this model has no parameter {name!r}")
    path, layout = by_name[name]
    out[path] = t.reshape(shapes[path]) if layout == "same" else t.T.reshape(shapes[path])
    saved.append(path)
  pattern = lambda paths: "|".join(sorted({re.escape("/".join(p)) for p in paths}))
  config = lora.LoraConfig(
    rank=int(cfg["r"]),
    alpha=float(cfg.get("lora_alpha", cfg["r"])),
    rslora=bool(cfg.get("use_rslora", False)),
    targets=pattern(targets),
    modules_to_save=pattern(saved) or "(?!)",  # none: train adapters only
  )
  return config, out
