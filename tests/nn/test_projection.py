"""flaxlm.nn.projection: every weight matrix of every transformer family is a `Projection`, so one
interceptor (LoRA, quantization, pruning masks) reaches all of them, with the parameter names
checkpoints and converters use."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flaxlm.models import heads, registry
from flaxlm.nn.projection import Projection

SMALL = dict(num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, vocab_size=64)
MODELS = {
  "gpt2": ("gpt", "tiny", {"tie_embeddings": False}),
  "llama": ("gpt", "llama_1b", {"num_kv_heads": 1, "head_dim": 8}),
  "bert_nsp": ("bert", "bert_tiny", {"nsp_head": True}),
  "t5_v1_1": ("encdec", "t5_tiny", {"tie_embeddings": False, "scale_tied_logits": False}),
}


def _model(name):
  family, preset, extra = MODELS[name]
  fam = registry.family_of(family)
  config = dataclasses.replace(fam.presets[preset], **SMALL, **extra)
  if family == "gpt" and preset == "llama_1b":
    config = dataclasses.replace(config, max_len=32, scan_layers=False)
  return fam, fam.module_cls(config)


def _intercepted(model, *args, **kwargs) -> tuple[dict, set]:
  """(params, the kernel paths every Projection call reads)."""
  seen = set()

  def record(next_fun, args_, kwargs_, context):
    if isinstance(context.module, Projection) and context.method_name == "__call__":
      seen.add((*context.module.scope.path, "kernel"))
    return next_fun(*args_, **kwargs_)

  with nn.intercept_methods(record):
    params = model.init(jax.random.PRNGKey(0), *args, **kwargs)["params"]
  return params, seen


def _matrices(params) -> set:
  """Every weight matrix: a 'kernel' of two or more dims (embedding tables are lookups)."""
  flat = traverse_util.flatten_dict(nn.meta.unbox(params))
  return {k for k, v in flat.items() if k[-1] == "kernel" and np.ndim(v) >= 2}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_weight_matrix_is_a_projection(name):
  fam, model = _model(name)
  tokens = jnp.ones((2, 8), jnp.int32)
  args = (tokens, tokens) if fam.kind == "encdec" else (tokens,)
  params, seen = _intercepted(model, *args)
  assert _matrices(params) == seen
  assert seen  # attention, MLP and output projections at least


@pytest.mark.parametrize("head", ["sequence", "token", "span"])
def test_task_heads_are_projections_under_hugging_face_names(head):
  fam, backbone = _model("bert_nsp")
  model = heads.TaskModel(backbone, fam.features, head, 3)
  params, seen = _intercepted(model, heads.dummy_batch(2, 8))
  assert (heads.HEAD_NAMES[head], "kernel") in seen
  assert _matrices(params) == seen


def test_projection_equals_dense_and_einsum():
  """Same parameters (names, shapes, init) and outputs as the nn.Dense and einsum it replaced."""
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 6))
  dense = nn.Dense(4, kernel_init=nn.initializers.normal(0.02))
  ours = Projection((4,), ("embed", "mlp"))
  p_dense, p_ours = (m.init(jax.random.PRNGKey(0), x)["params"] for m in (dense, ours))
  p_ours = nn.meta.unbox(p_ours)
  jax.tree.map(np.testing.assert_array_equal, p_ours, p_dense)
  np.testing.assert_allclose(ours.apply({"params": p_ours}, x), dense.apply({"params": p_dense}, x),
                             rtol=1e-6)  # fmt: skip
  out = Projection((6,), ("heads", "head_dim", "embed"), contract=2)
  y = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 3, 4))
  p = nn.meta.unbox(out.init(jax.random.PRNGKey(0), y)["params"])
  want = jnp.einsum("BTNH,NHD->BTD", y, p["kernel"]) + p["bias"]
  np.testing.assert_allclose(out.apply({"params": p}, y), want, rtol=1e-6, atol=1e-6)
