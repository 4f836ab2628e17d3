"""The one table of model families: config class, presets, module, FLOP count, objective."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn

from flaxlm.models import bert, encdec, gpt


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  config_cls: type
  presets: Mapping[str, Any]
  module_cls: type[nn.Module]
  flops_per_token: Callable[..., float]  # (config, seq_len, target_len=0) -> FLOPs/token
  objective: str  # the objectives.OBJECTIVES entry its pretraining uses by default


FAMILIES: dict[str, Family] = {
  "gpt": Family("gpt", gpt.GPTConfig, gpt.PRESETS, gpt.GPT, gpt.flops_per_token, "causal_lm"),
  "bert": Family("bert", bert.BertConfig, bert.PRESETS, bert.Bert, bert.flops_per_token, "mlm"),
  "encdec": Family(
    "encdec",
    encdec.EncDecConfig,
    encdec.PRESETS,
    encdec.EncoderDecoder,
    encdec.flops_per_token,
    "span_corruption",
  ),
}


def family_of(name: str) -> Family:
  if name not in FAMILIES:
    raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}")
  return FAMILIES[name]


def model_config(family: str, fields: Mapping[str, Any]):
  """Builds the frozen model config from the run config's `model` block, naming bad keys."""
  fam = family_of(family)
  known = {f.name for f in dataclasses.fields(fam.config_cls)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(
      f"config.model has keys {unknown} that {fam.config_cls.__name__} does not know; "
      f"valid keys: {sorted(known)}"
    )
  return fam.config_cls(**fields)


def build_model(family: str, config) -> nn.Module:
  return family_of(family).module_cls(config)
