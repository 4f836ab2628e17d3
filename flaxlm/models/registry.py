"""The one table of model families: config class, presets, module, FLOP count, the
pretraining objectives each can train, and what task heads read from it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn

from flaxlm.errors import ConfigError
from flaxlm.models import bert, encdec, gpt, lstm


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  config_cls: type
  presets: Mapping[str, Any]
  module_cls: type[nn.Module]
  flops_per_token: Callable[..., float]  # (config, seq_len, target_len=0) -> FLOPs/token
  objectives: tuple[str, ...]  # pretraining objectives it trains; the first is the default
  # (bound module, batch, deterministic) -> {'hidden' (B, T, D), 'pooled' (B, D)}
  features: Callable[..., dict]
  kind: str  # 'decoder' | 'encoder' | 'encdec': how tasks shape inputs and predictions
  # its features read padding-free rows (several examples per row, a pooled state for each)
  reads_packed_rows: bool = False
  # the transformers architectures it exports as, in order of preference (flaxlm.convert
  # takes the first whose converter fits the model config; a tokenizer that came from one of
  # them picks it); () = no Hugging Face counterpart
  hf_architectures: tuple[str, ...] = ()

  @property
  def objective(self) -> str:
    return self.objectives[0] if self.objectives else ""


FAMILIES: dict[str, Family] = {
  "gpt": Family(
    "gpt", gpt.GPTConfig, gpt.PRESETS, gpt.GPT, gpt.flops_per_token, ("causal_lm",),
    gpt.features, "decoder", hf_architectures=("gpt2", "llama"),
  ),
  "bert": Family(
    "bert", bert.BertConfig, bert.PRESETS, bert.Bert, bert.flops_per_token, ("mlm", "mlm_nsp"),
    bert.features, "encoder", reads_packed_rows=True, hf_architectures=("bert", "roberta"),
  ),
  "encdec": Family(
    "encdec", encdec.EncDecConfig, encdec.PRESETS, encdec.EncoderDecoder, encdec.flops_per_token,
    ("span_corruption", "seq2seq"), encdec.features, "encdec", hf_architectures=("t5",),
  ),
  "lstm": Family(
    "lstm", lstm.LSTMConfig, lstm.PRESETS, lstm.BiLSTM, lstm.flops_per_token, (),
    lstm.features, "encoder",
  ),
}  # fmt: skip


def family_of(name: str) -> Family:
  if name not in FAMILIES:
    raise ConfigError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}")
  return FAMILIES[name]


def register(family: Family) -> Family:
  """Adds a model family: a module of its own and this call, no other file (tasks read it
  through `features` and `kind`, pretraining through `objectives`, export through
  `hf_architectures`)."""
  FAMILIES[family.name] = family
  return family


def model_config(family: str, fields: Mapping[str, Any]):
  """Builds the frozen model config from the run config's `model` block, naming bad keys."""
  fam = family_of(family)
  known = {f.name for f in dataclasses.fields(fam.config_cls)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ConfigError(
      f"config.model has keys {unknown} that {fam.config_cls.__name__} does not know; "
      f"valid keys: {sorted(known)}"
    )
  try:
    return fam.config_cls(**fields)
  except ValueError as e:  # the config class's own checks
    raise ConfigError(str(e)) from None


def padded_vocab(vocab_size: int, multiple: int) -> int:
  """`vocab_size` rounded up to a multiple (fast, evenly sharded embeddings); the one rule
  pretraining, fine-tuning from scratch and Hugging Face import size vocabularies by."""
  return vocab_size if multiple <= 1 else -(-vocab_size // multiple) * multiple


def build_model(family: str, config) -> nn.Module:
  return family_of(family).module_cls(config)


# Model keys that change how a model runs, not its parameters: a resumed or fine-tuned run
# may set them differently from the checkpoint (e.g. another remat policy on a new machine).
RUNTIME_KEYS = ("dtype", "remat_policy", "attention_impl", "dropout_rate", "num_vocab_tiles")
