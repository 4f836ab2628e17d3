"""flaxlm.nn.losses: the vocabulary-tiled cross-entropy equals the plain one in value and
gradient, never holds the (B, T, V) logits, and is what a GPT with `num_vocab_tiles` trains on."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxlm.models import gpt
from flaxlm.nn import losses
from flaxlm.objectives import LossConfig, causal_lm

B, T, D, V = 2, 32, 16, 96


def inputs(seed=0):
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
  kernel = jnp.asarray(rng.normal(scale=0.5, size=(D, V)), jnp.float32)
  targets = rng.integers(0, V, (B, T))
  targets[:, ::2] = np.argmax(np.asarray(hidden @ kernel), axis=-1)[:, ::2]  # some are right
  targets = jnp.asarray(targets, jnp.int32)
  weights = jnp.asarray(rng.random((B, T)) > 0.2, jnp.float32)  # some positions do not count
  return hidden, kernel, targets, weights


def plain(hidden, kernel, targets, weights, smoothing, z):
  return losses.cross_entropy(hidden @ kernel, targets, weights, smoothing, z)


@pytest.mark.parametrize("chunks", [4, 32])
@pytest.mark.parametrize("smoothing,z", [(0.0, 0.0), (0.1, 1e-4)])
def test_chunked_cross_entropy_equals_plain_in_value_and_gradient(chunks, smoothing, z):
  hidden, kernel, targets, weights = inputs()

  def run(fn):
    loss = lambda h, k: fn(h, k, targets, weights, smoothing, z)["loss_sum"]
    sums = jax.jit(fn, static_argnums=(4, 5))(hidden, kernel, targets, weights, smoothing, z)
    return sums, jax.jit(jax.grad(loss, argnums=(0, 1)))(hidden, kernel)

  chunked = lambda h, k, t, w, s, z: losses.chunked_cross_entropy(h, k, t, w, chunks, s, z)
  (got, got_grads), (want, want_grads) = run(chunked), run(plain)
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5)
  for a, b in zip(got_grads, want_grads, strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)
  assert float(want["correct_sum"]) > 0  # accuracy is exercised, not trivially zero


def largest_intermediate(fn, *args) -> int:
  """Elements of the largest value any equation of fn's jaxpr (sub-jaxprs included) makes."""
  sizes = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      sizes.extend(int(np.prod(v.aval.shape)) for v in eqn.outvars if hasattr(v.aval, "shape"))
      for p in eqn.params.values():
        for sub in p if isinstance(p, (tuple, list)) else [p]:
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            walk(sub.jaxpr)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return max(sizes)


def test_chunked_cross_entropy_never_holds_the_logits():
  """Forward and backward: no value as large as the (B, T, V) logits, only a chunk of them."""
  hidden, kernel, targets, weights = inputs()

  def grads(fn):
    return jax.grad(lambda h, k: fn(h, k, targets, weights, 0.0, 1e-4)["loss_sum"], (0, 1))

  chunked = lambda h, k, t, w, s, z: losses.chunked_cross_entropy(h, k, t, w, 4, s, z)
  assert largest_intermediate(grads(plain), hidden, kernel) == B * T * V  # the test can fail
  assert largest_intermediate(grads(chunked), hidden, kernel) == B * T * V // 4


def test_chunked_cross_entropy_needs_chunks_dividing_the_length():
  with pytest.raises(ValueError, match="num_vocab_tiles=5 must divide"):
    losses.chunked_cross_entropy(*inputs(), 5)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_gpt_with_vocab_tiles_trains_on_the_same_loss_and_gradients(tied):
  config = gpt.GPTConfig(
    vocab_size=V, num_layers=1, num_heads=2, embed_dim=D, mlp_dim=32, max_len=T, tie_embeddings=tied
  )
  _, _, targets, weights = inputs()
  batch = {"inputs": targets, "targets": jnp.roll(targets, -1, 1), "weights": weights}
  abstract = jax.eval_shape(lambda: gpt.GPT(config).init(jax.random.PRNGKey(0), targets))
  rng = np.random.default_rng(1)
  params = jax.tree.map(
    lambda a: jnp.asarray(rng.normal(scale=0.3, size=a.shape), a.dtype),
    nn.meta.unbox(abstract["params"]),
  )

  def run(tiles):
    model = gpt.GPT(dataclasses.replace(config, num_vocab_tiles=tiles))
    loss = lambda p: causal_lm(model, p, batch, None, True, LossConfig(z_loss=1e-4))["loss_sum"]
    return jax.jit(jax.value_and_grad(loss))(params)

  (got, got_grads), (want, want_grads) = run(4), run(1)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)
