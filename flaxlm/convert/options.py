"""Architecture options in a Hugging Face `config.json` that the converters share: activation
names in both directions, and the rule that an option flaxlm cannot express fails with an
error naming it (it is never dropped). Also the options flaxlm cannot express on export."""

from __future__ import annotations

from flaxlm.errors import ConfigError

# transformers' ACT2FN name -> flaxlm's layers.ACTIVATIONS name (exact matches only:
# 'gelu_new' and 'gelu_pytorch_tanh' are both the tanh approximation).
FROM_HF = {
  "gelu": "gelu_exact",
  "gelu_new": "gelu",
  "gelu_pytorch_tanh": "gelu",
  "relu": "relu",
  "silu": "silu",
  "swish": "silu",
}
TO_HF = {"gelu_exact": "gelu", "gelu": "gelu_new", "relu": "relu", "silu": "silu"}


def activation(hf: dict, key: str, default: str) -> str:
  name = hf.get(key, default)
  if name not in FROM_HF:
    raise unsupported(hf, key, name, f"flaxlm has {sorted(FROM_HF)}")
  return FROM_HF[name]


def unsupported(hf: dict, key: str, value, why: str = "") -> ConfigError:
  model = hf.get("model_type", "?")
  return ConfigError(
    f"config.json ({model}): {key}={value!r} is not supported by flaxlm"
    + (f" ({why})" if why else "")
    + "; the checkpoint cannot be imported without changing what it computes"
  )


def require(hf: dict, key: str, allowed: tuple, default=None, why: str = "") -> None:
  """Fails naming `key` when its value (or `default` when absent) is not in `allowed`."""
  value = hf.get(key, default)
  if value not in allowed:
    raise unsupported(hf, key, value, why)


def check_export(config, arch: str, free_head_dim: bool = False, **expected) -> None:
  """Fails naming each model.<field> of a flaxlm config that `arch` cannot express
  (`free_head_dim`: it has its own head_dim, not embed_dim / num_heads)."""
  bad = [
    f"model.{k}={getattr(config, k)!r} (needs {v!r})"
    for k, v in expected.items()
    if getattr(config, k) != v
  ]
  if config.dim_per_head * config.num_heads != config.embed_dim and not free_head_dim:
    bad.append(f"model.head_dim={config.head_dim} (needs embed_dim / num_heads)")
  if config.activation not in TO_HF:
    bad.append(f"model.activation={config.activation!r}")
  if bad:
    raise ConfigError(f"a Hugging Face {arch} model cannot express {', '.join(bad)}")
