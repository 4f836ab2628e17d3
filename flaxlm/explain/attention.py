"""Attention maps: every layer's and head's attention probabilities for one text.

    maps = attention_maps(flaxlm.explain.load("/tmp/sst2_minilm"), "a gripping, funny film")
    maps.maps["encoder"].shape   # (layers, heads, T, S); rows sum to 1

Each attention layer fills the `attention_maps` collection when it is mutable (see
`flaxlm.nn.layers.Attention`): its probabilities are then computed by the reference softmax and
the values weighed by them, so the maps are the forward pass's own whatever kernel the model
was trained with (a fused kernel such as splash or cuDNN never materializes them).

Kinds of map: 'encoder' (bidirectional self-attention: BERT, BiLSTM has none, an
encoder-decoder's encoder), 'decoder' (causal self-attention: GPT, an encoder-decoder's
decoder) and 'cross' (decoder queries over encoder keys).
"""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
from flax import traverse_util

from flaxlm.errors import ConfigError
from flaxlm.explain.subject import Subject, encode, forward, token_labels
from flaxlm.nn import attention as kernels
from flaxlm.nn.layers import MAPS


@dataclasses.dataclass
class AttentionMaps:
  """maps[kind]: (layers, heads, T, S) float32 for one text; rows[kind] / columns[kind]: the
  T query and S key token labels."""

  maps: dict[str, np.ndarray]
  rows: dict[str, list[str]]
  columns: dict[str, list[str]]
  kernel: str  # the kernel the model runs outside this pass (the maps use the reference path)


def attention_maps(
  subject: Subject, text: str, pair: str | None = None, target: str | None = None
) -> AttentionMaps:
  """The attention probabilities of `subject` reading `text` (and `pair`; `target` on an
  encoder-decoder's decoder side)."""
  batch, ids = encode(subject, text, pair, target)
  _, state = jax.jit(lambda b: forward(subject, b, mutable=[MAPS]))(batch)
  found = collect(state.get(MAPS, {}), subject.family.kind)
  if not found:
    raise ConfigError(
      f"{subject.source}: a {subject.family.name} model has no attention layers to map"
    )
  labels = {side: token_labels(subject.tokenizer, ids[side]) for side in ids}
  source, target_side = labels["inputs"], labels.get("decoder_inputs", labels["inputs"])
  rows = {"encoder": source, "decoder": target_side, "cross": target_side}
  columns = {"encoder": source, "decoder": target_side, "cross": source}
  kernel = kernels.resolve(subject.attention_impl) if subject.attention_impl else ""
  return AttentionMaps(
    {k: v[:, :, : len(rows[k]), : len(columns[k])] for k, v in found.items()},
    {k: rows[k] for k in found},
    {k: columns[k] for k in found},
    kernel,
  )


def collect(collection: dict, family_kind: str) -> dict[str, np.ndarray]:
  """{kind: (layers, heads, T, S)} of the first row, from an `attention_maps` collection.

  Blocks are 'layers_{i}' (a scanned stack: 'layers', its leading axis the layer);
  'cross_attn' is cross-attention, and a stack under 'decoder' (or a decoder-only family's)
  is causal self-attention."""
  layers: dict[str, dict[int, np.ndarray]] = {}
  for path, sown in traverse_util.flatten_dict(collection).items():
    probs = np.asarray(jax.device_get(sown[0]), np.float32)
    kind = "cross" if "cross_attn" in path else "encoder"
    if kind == "encoder" and ("decoder" in path or family_kind == "decoder"):
      kind = "decoder"
    stack = next(p for p in path if re.fullmatch(r"layers(_\d+)?", p))
    if stack == "layers":  # scanned: (L, B, N, T, S)
      for i, layer in enumerate(probs):
        layers.setdefault(kind, {})[i] = layer[0]
    else:
      layers.setdefault(kind, {})[int(stack.split("_")[1])] = probs[0]
  return {k: np.stack([by[i] for i in sorted(by)]) for k, by in layers.items()}
