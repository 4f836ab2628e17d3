"""Device mesh and the logical-axis -> mesh-axis rules.

Models name their axes ('embed', 'heads', 'mlp', ...); this module alone knows mesh axes.
Three mesh axes, as in MaxText / the Flax examples:
  data   - pure data parallelism (replicated parameters)
  fsdp   - data parallelism with parameters and optimizer state sharded (ZeRO-3)
  tensor - Megatron-style tensor parallelism over heads, MLP width and vocabulary
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# (logical axis, mesh axes) pairs. The first matching mesh axis not already used wins.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  ("activation_batch", ("data", "fsdp")),
  ("activation_length", None),
  ("activation_embed", None),
  ("activation_heads", "tensor"),
  ("activation_mlp", "tensor"),
  ("activation_vocab", "tensor"),
  ("vocab", "tensor"),
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("mlp", "tensor"),
  ("head_dim", None),
  ("max_len", None),
  ("norm", None),
  ("layers", None),
  ("relpos_buckets", None),
  # The KV cache (decoding): rows over the data-parallel axes, kv heads over tensor.
  ("cache_batch", ("data", "fsdp")),
  ("cache_length", None),
  ("cache_kv_heads", "tensor"),
  ("cache_head_dim", None),
  ("num_types", None),
  ("labels", None),
  ("char_vocab", None),
)


def make_mesh(axis_sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh; one size may be -1 to take the remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  unknown = set(axis_sizes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"config.mesh has unknown axes {sorted(unknown)}; use {MESH_AXES}")
  sizes = [int(axis_sizes.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh={dict(axis_sizes)}: at most one axis may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"config.mesh={dict(axis_sizes)} does not divide {len(devices)} devices")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(
      f"config.mesh={dict(zip(MESH_AXES, sizes, strict=True))} needs {math.prod(sizes)} devices but "
      f"{len(devices)} are available; set one axis to -1 to fill the rest"
    )
  # mesh_utils orders devices so that tensor-parallel groups share the fastest links.
  try:
    grid = mesh_utils.create_device_mesh(sizes, devices)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices).reshape(sizes)
  return Mesh(grid, MESH_AXES)


def rules_from_config(rules: Sequence[Sequence] | None):
  """Rules as a tuple of (name, axes) with lists turned to tuples (configs hold lists)."""
  if not rules:
    return DEFAULT_RULES
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def logical_shardings(abstract_tree, mesh: Mesh, rules):
  """NamedShardings for a tree whose leaves may be nn.LogicallyPartitioned boxes."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def strip_axes(tree):
  """A tree of (abstract) boxed parameters without its logical-axis boxes. Unlike
  `nn.meta.unbox` it adds no sharding constraint, so it works outside a traced function."""
  return jax.tree.map(
    lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x,
    tree,
    is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata),
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches split their leading axis over every data-parallel axis; the rest is replicated,
  whatever the rank (per-example labels (B,), tokens (B, T), features (B, T, F))."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def process_rows(sharding: jax.sharding.Sharding, global_shape: tuple[int, ...]) -> np.ndarray:
  """The global batch rows this process's devices hold under `sharding`, in order."""
  rows = set()
  for index in sharding.addressable_devices_indices_map(global_shape).values():
    rows.update(range(*index[0].indices(global_shape[0])))
  return np.array(sorted(rows))


def host_rows(mesh: Mesh, global_batch: int) -> np.ndarray:
  """The rows of a global batch that this process's devices hold."""
  return process_rows(batch_sharding(mesh), (global_batch,))


def local_to_global(batch: dict[str, np.ndarray], sharding, global_batch: int) -> dict:
  """This host's rows (`host_rows`) of a global batch -> the global jax.Arrays."""
  return {
    key: jax.make_array_from_process_local_data(
      sharding, np.asarray(value), (global_batch, *np.shape(value)[1:])
    )
    for key, value in batch.items()
  }


def to_global(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """A global numpy batch -> jax.Arrays laid out by `sharding` (leading axis split over the
  data-parallel devices; any rank), each host sending only its rows."""
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    rows = process_rows(sharding, value.shape)
    out[key] = jax.make_array_from_process_local_data(sharding, value[rows], value.shape)
  return out


# Axes a lookup table is indexed by (its first axis); axes that only biases have.
LOOKUP_AXES = ("vocab", "char_vocab", "max_len", "num_types", "relpos_buckets")
BIAS_ONLY_AXES = ("heads", "kv_heads", "head_dim")


def parameter_role(names: tuple | None, ndim: int) -> str:
  """'embedding', 'weight' or 'bias' (biases and norm scales), from a parameter's logical
  axis names (the scanned 'layers' axis aside); unannotated parameters go by rank."""
  if names is None:
    return "weight" if ndim >= 2 else "bias"
  axes = tuple(a for a in names if a != "layers")
  if len(axes) >= 2 and axes[0] in LOOKUP_AXES:
    return "embedding"
  if len(axes) >= 2 and not all(a in BIAS_ONLY_AXES for a in axes):
    return "weight"  # a kernel: maps between feature spaces (q/k/v biases are heads x head_dim)
  return "bias"
