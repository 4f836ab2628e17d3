"""A search space: config keys with the values a search may give them, read from JSON.

    {
      "learning_rate":     {"type": "log_uniform", "low": 3e-4, "high": 1e-2},
      "model.dropout_rate": {"type": "uniform", "low": 0.0, "high": 0.5},
      "model.hidden_dim":  {"type": "int", "low": 64, "high": 256, "step": 64},
      "batch_size":        {"type": "categorical", "choices": [32, 64, 128]}
    }

Keys are dotted paths of the run config (as `--config.<key>=` takes them); `int` also takes
`"log": true`. Every key and range is checked against the config before any trial runs.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from flaxlm.errors import ConfigError, DataNotFoundError

TYPES = {
  "log_uniform": ("low", "high"),
  "uniform": ("low", "high"),
  "int": ("low", "high"),
  "categorical": ("choices",),
}
_OPTIONAL = {"int": ("step", "log"), "uniform": ("step",)}


@dataclasses.dataclass(frozen=True)
class Dimension:
  key: str  # dotted config path
  type: str
  low: float | None = None
  high: float | None = None
  step: float | None = None
  log: bool = False
  choices: tuple = ()

  def suggest(self, trial):
    """The value an Optuna trial gives this key."""
    if self.type == "categorical":
      return trial.suggest_categorical(self.key, list(self.choices))
    if self.type == "int":
      return trial.suggest_int(self.key, int(self.low), int(self.high),
                               step=int(self.step or 1), log=self.log)  # fmt: skip
    return trial.suggest_float(self.key, self.low, self.high,
                               step=self.step, log=self.type == "log_uniform")  # fmt: skip


def read(path: str) -> list[Dimension]:
  """The dimensions of a space file, each checked for its fields (file and key named)."""
  p = pathlib.Path(path)
  if not p.is_file():
    raise DataNotFoundError(f"--space={path} does not exist; see flaxlm/search/space.py")
  try:
    raw = json.loads(p.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ConfigError(f"--space={path}:{e.lineno}: not JSON ({e.msg})") from None
  if not isinstance(raw, dict) or not raw:
    raise ConfigError(f"--space={path}: expected an object of config keys, e.g. "
                      '{"learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2}}')  # fmt: skip
  return [_dimension(path, key, spec) for key, spec in raw.items()]


def _dimension(path: str, key: str, spec) -> Dimension:
  where = f"--space={path}: {key!r}"
  kind = spec.get("type") if isinstance(spec, dict) else None
  if kind not in TYPES:
    raise ConfigError(f"{where} needs a type among {sorted(TYPES)}")
  allowed = {"type", *TYPES[kind], *_OPTIONAL.get(kind, ())}
  missing = [f for f in TYPES[kind] if f not in spec]
  unknown = sorted(set(spec) - allowed)
  if missing or unknown:
    raise ConfigError(f"{where} ({kind}) needs {list(TYPES[kind])}; missing {missing}, "
                      f"unknown {unknown}")  # fmt: skip
  if kind == "categorical":
    if not isinstance(spec["choices"], list) or not spec["choices"]:
      raise ConfigError(f"{where}: choices must be a non-empty list")
    return Dimension(key, kind, choices=tuple(spec["choices"]))
  low, high = spec["low"], spec["high"]
  if not all(isinstance(v, int | float) for v in (low, high)) or not low < high:
    raise ConfigError(f"{where}: low < high, both numbers (got {low!r}, {high!r})")
  if kind == "log_uniform" and low <= 0:
    raise ConfigError(f"{where}: a log-uniform range must be above 0 (low={low})")
  return Dimension(key, kind, low, high, spec.get("step"), bool(spec.get("log", False)))


def check_against(dimensions: list[Dimension], config) -> None:
  """Every key names a value of `config` (a ConfigDict) of a type the range can set."""
  for d in dimensions:
    value = lookup(config, d.key)
    numeric = d.type != "categorical"
    if numeric and (isinstance(value, bool) or not isinstance(value, int | float)):
      raise ConfigError(f"space key {d.key!r}: the config holds {value!r}, not a number")


def lookup(config, key: str):
  node = config
  for i, part in enumerate(key.split(".")):
    try:
      node = node[part]
    except (KeyError, TypeError):
      known = sorted(node.keys()) if hasattr(node, "keys") else []
      where = ".".join(key.split(".")[:i]) or "the config"
      raise ConfigError(f"space key {key!r}: {where} has no {part!r}; known: {known}") from None
  return node


def apply(config, values: dict) -> None:
  """Sets each dotted key of `values` in `config` (a ConfigDict), keeping its field's type
  (an int field given 3.0 by a float range stays an int)."""
  for key, value in values.items():
    *parents, last = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    old = node[last]
    if isinstance(old, int) and not isinstance(old, bool) and isinstance(value, float):
      value = int(round(value))
    elif isinstance(old, float) and isinstance(value, int):
      value = float(value)
    node[last] = value
