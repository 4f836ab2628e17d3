"""The two sides of a conversion: a checkpoint's tensors handed out once each (`Weights`),
the layout changes between PyTorch linears and flaxlm's einsum kernels, vocabulary padding,
and the check that a converted tree is exactly the one flaxlm's own module creates.

Shape letters as in `flaxlm.nn.layers`: D embed_dim, N query heads, K kv heads, H head_dim,
F mlp_dim, V vocab. PyTorch `nn.Linear` stores (out, in); flaxlm kernels are (in, ...out).
"""

from __future__ import annotations

import dataclasses
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from flaxlm.errors import CheckpointMismatchError


@dataclasses.dataclass
class Converted:
  """What a family converter reads from a checkpoint."""

  config: object  # the family's frozen model config
  params: dict  # the backbone's tree, or {'backbone': ..., <head>: ...} for a task model
  task: str | None = None  # None (a language model or bare backbone) | sequence | token | span
  unused: list[str] = dataclasses.field(default_factory=list)  # checkpoint names not taken


class Weights:
  """A checkpoint's tensors by Hugging Face name, below a base-model `prefix` ('bert.',
  'transformer.', ...). `take` hands each tensor out once; `leftover` names every tensor no
  converter took, so an import never drops weights silently."""

  def __init__(self, tensors: dict[str, np.ndarray], prefix: str = ""):
    self.tensors, self.prefix, self.taken = tensors, prefix, set()

  def name(self, key: str, base: bool = True) -> str:
    return self.prefix + key if base else key

  def has(self, key: str, base: bool = True) -> bool:
    return self.name(key, base) in self.tensors

  def take(self, key: str, base: bool = True) -> np.ndarray:
    name = self.name(key, base)
    if name not in self.tensors:
      raise CheckpointMismatchError(f"the checkpoint lacks {name!r}")
    self.taken.add(name)
    return self.tensors[name]

  def take_copy(self, key: str, of: np.ndarray, base: bool = True) -> None:
    """Consumes a tied duplicate (an LM decoder saved beside the embedding it equals)."""
    if self.has(key, base):
      if not np.array_equal(self.take(key, base), of):
        raise CheckpointMismatchError(
          f"{self.name(key, base)!r} differs from the weight it is tied to; flaxlm ties them"
        )

  def skip_buffers(self, *suffixes: str) -> None:
    """Passes over non-weights that older transformers versions saved (position-id and
    causal-mask buffers, rotary frequencies), named by their suffixes."""
    self.taken.update(k for k in self.tensors if k.endswith(suffixes))

  def leftover(self) -> list[str]:
    return sorted(set(self.tensors) - self.taken)


# --- layouts (shapes in comments: PyTorch -> flaxlm) ------------------------------------------


def dense(w: np.ndarray, b: np.ndarray | None = None) -> dict:
  """nn.Linear (out, in) [+ (out,)] -> {'kernel': (in, out) [, 'bias']}."""
  out = {"kernel": w.T}
  if b is not None:
    out["bias"] = b
  return out


def to_heads(w: np.ndarray, heads: int) -> np.ndarray:
  """Projection (N*H, D) -> kernel (D, N, H)."""
  return w.T.reshape(w.shape[1], heads, -1)


def from_heads(kernel: np.ndarray) -> np.ndarray:
  """Kernel (D, N, H) -> projection (N*H, D)."""
  return kernel.reshape(kernel.shape[0], -1).T


def out_to_heads(w: np.ndarray, heads: int) -> np.ndarray:
  """Output projection (D, N*H) -> kernel (N, H, D)."""
  return w.T.reshape(heads, -1, w.shape[0])


def out_from_heads(kernel: np.ndarray) -> np.ndarray:
  """Kernel (N, H, D) -> output projection (D, N*H)."""
  return kernel.reshape(-1, kernel.shape[-1]).T


def norm(weight: np.ndarray, bias: np.ndarray | None = None) -> dict:
  return {"scale": weight} if bias is None else {"scale": weight, "bias": bias}


# --- vocabulary padding -----------------------------------------------------------------------


def pad_rows(x: np.ndarray, rows: int, axis: int = 0) -> np.ndarray:
  """Zero rows appended along `axis` up to `rows` (padded vocabulary ids)."""
  extra = rows - x.shape[axis]
  if extra <= 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return np.pad(x, widths)


def used_vocab(tables: list[tuple[np.ndarray, int]], keep: int) -> int:
  """How many vocabulary rows an export keeps: trailing rows past `keep` (the tokenizer's
  size, or 0) are dropped only where every (array, vocab axis) in `tables` is zero there,
  which is what import padding writes; trained rows stay (HF T5 ships 32128 rows for 32100
  ids, flaxlm pads its own vocabularies with trained rows)."""
  total = tables[0][0].shape[tables[0][1]]
  n = total
  while n > keep and all(not np.take(a, n - 1, axis=axis).any() for a, axis in tables):
    n -= 1
  return n


# --- the tree flaxlm creates ------------------------------------------------------------------


def abstract_params(model) -> dict:
  """{path tuple: ShapeDtypeStruct} of `model.init`'s params, without allocating them."""
  from flaxlm.models import heads
  from flaxlm.nn.sharding import strip_axes

  if isinstance(model, heads.TaskModel):
    init = lambda rng: model.init(rng, heads.dummy_batch(1))
  else:
    init = lambda rng: model.init(rng, jnp.zeros((1, 8), jnp.int32))
  boxed = jax.eval_shape(init, jax.random.PRNGKey(0))["params"]
  return traverse_util.flatten_dict(strip_axes(boxed))


def fresh(path: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
  """flaxlm's initializer for a parameter the checkpoint lacks, seeded by its path so that
  two imports of one checkpoint agree: norm scales 1, biases 0, the rest N(0, 0.02)."""
  leaf = path[-1]
  if leaf == "scale":
    return np.ones(shape, np.float32)
  if leaf.endswith("bias"):
    return np.zeros(shape, np.float32)
  rng = np.random.default_rng(zlib.crc32("/".join(path).encode()))
  return (0.02 * rng.standard_normal(shape)).astype(np.float32)


def complete(params: dict, model) -> tuple[dict, list[str]]:
  """`params` checked against `model`'s own tree (same paths, same shapes), with the
  parameters the checkpoint lacks (e.g. the MLM head of a bare encoder) freshly initialized.
  Returns (params, paths initialized here)."""
  want = abstract_params(model)
  have = traverse_util.flatten_dict(params)
  extra = sorted("/".join(k) for k in have if k not in want)
  bad = sorted(
    f"{'/'.join(k)}: {have[k].shape} vs {v.shape}"
    for k, v in want.items()
    if k in have and tuple(have[k].shape) != tuple(v.shape)
  )
  if extra or bad:
    raise CheckpointMismatchError(
      f"converted parameters do not fit flaxlm's module: unexpected {extra[:6]}, "
      f"shape-mismatched {bad[:6]}"
    )
  initialized = sorted(k for k in want if k not in have)
  flat = {k: np.asarray(have[k], np.float32) for k in want if k in have}
  flat.update({k: fresh(k, tuple(want[k].shape)) for k in initialized})
  return traverse_util.unflatten_dict(flat), ["/".join(k) for k in initialized]


def unstack_layers(params: dict, name: str = "layers") -> dict:
  """Scanned stacks {name: leaves (L, ...)} -> {name_0: ..., name_{L-1}: ...}, at any depth
  (an encoder and a decoder may differ in L); export reads unscanned layers."""
  out = {}
  for key, value in params.items():
    if key == name and isinstance(value, dict):
      count = jax.tree.leaves(value)[0].shape[0]
      for i in range(count):
        out[f"{name}_{i}"] = jax.tree.map(lambda x, i=i: np.asarray(x, np.float32)[i], value)
    elif isinstance(value, dict):
      out[key] = unstack_layers(value, name)
    else:
      out[key] = np.asarray(value, np.float32)
  return out


def lm_head(
  hf: dict, w: Weights, key: str, embedding: np.ndarray, tie_default: bool = True
) -> tuple[bool, np.ndarray | None]:
  """(tied, head (V, D) or None) for the LM head saved as `key`, decided as transformers
  loads it: a head saved beside the embedding with other values is untied whatever
  `tie_word_embeddings` says; an absent head is tied unless the config (or, without the key,
  the family's default) unties it: then the head is None and gets a fresh init."""
  if not w.has(key, base=False):
    return bool(hf.get("tie_word_embeddings", tie_default)), None
  head = w.take(key, base=False)
  return (True, None) if np.array_equal(head, embedding) else (False, head)


def head_in(w: Weights, name: str) -> dict:
  """A task head nn.Linear `name` (out, in) -> flaxlm Dense {'kernel' (in, out), 'bias'}."""
  return dense(w.take(f"{name}.weight", base=False), w.take(f"{name}.bias", base=False))


def head_out(params: dict, name: str) -> dict:
  return {f"{name}.weight": params["kernel"].T, f"{name}.bias": params["bias"]}
