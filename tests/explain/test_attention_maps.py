"""Attention maps: rows are distributions, a causal model's are lower-triangular, and they are
the probabilities the model's own forward pass weighs its values by (its logits unchanged, and
equal to softmax(q k^T / sqrt(H)) of the q and k it computed), for a decoder (scanned or not)
and an encoder-decoder's three kinds of attention."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flaxlm.data.tokenizers import ByteTokenizer
from flaxlm.explain import attention_maps
from flaxlm.explain.subject import Subject, encode, forward
from flaxlm.models import registry
from flaxlm.nn.layers import MAPS


def _subject(family: str, preset: str, **fields) -> Subject:
  fam = registry.family_of(family)
  config = dataclasses.replace(fam.presets[preset], **fields)
  module = fam.module_cls(config)
  tokens = jnp.ones((1, 8), jnp.int32)
  params = module.init(jax.random.key(0), tokens, tokens)["params"] if family == "encdec" else (
    module.init(jax.random.key(0), tokens)["params"]
  )  # fmt: skip
  return Subject(module, nn.meta.unbox(params), ByteTokenizer(), fam, config, None, "test")


TINY = dict(num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, vocab_size=260, max_len=64)


@pytest.mark.parametrize("scan", [False, True])
def test_a_decoders_maps_are_causal_distributions_of_its_own_forward_pass(scan):
  subject = _subject("gpt", "tiny", **TINY, scan_layers=scan)
  text = "attention is all"
  maps = attention_maps(subject, text)
  m = maps.maps["decoder"]  # (L, N, T, T)
  t = len(maps.rows["decoder"])
  assert m.shape == (2, 2, t, t) and maps.rows["decoder"] == maps.columns["decoder"]
  np.testing.assert_allclose(m.sum(-1), 1.0, atol=1e-5)
  assert np.all(np.triu(m, k=1) == 0.0), "a causal map attends to later tokens"

  batch, _ = encode(subject, text)
  plain, _ = forward(subject, batch)
  with_maps, _ = forward(subject, batch, mutable=[MAPS])
  np.testing.assert_allclose(with_maps["hidden"], plain["hidden"], atol=1e-5)
  if scan:  # nn.scan does not capture intermediates: the unrolled stack checks q and k, and
    return  # test_scanned_and_unrolled_layers_give_the_same_maps ties the two
  # q and k of layer 0 as the forward pass projected them (GPT-2: learned positions, no RoPE)
  _, state = subject.module.apply(
    {"params": subject.params}, batch, True, method=subject.family.features,
    capture_intermediates=lambda mdl, _: mdl.name in ("query", "key"), mutable=["intermediates"],
  )  # fmt: skip
  flat = traverse_util.flatten_dict(state["intermediates"])
  pick = lambda name: np.asarray(next(v[0] for p, v in flat.items() if name in p))
  q, k = pick("query"), pick("key")  # (B, T, N, H)
  scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
  scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
  want = np.exp(scores - scores.max(-1, keepdims=True))
  want /= want.sum(-1, keepdims=True)
  np.testing.assert_allclose(m[0], want[0], atol=1e-5)


def test_scanned_and_unrolled_layers_give_the_same_maps():
  one = _subject("gpt", "tiny", **TINY, scan_layers=False)
  scanned = _subject("gpt", "tiny", **TINY, scan_layers=True)
  # the same weights: the scanned stack is the unrolled layers along a leading axis
  flat = traverse_util.flatten_dict(one.params)
  stacked = {}
  for path, value in flat.items():
    if path[0].startswith("layers_"):
      stacked.setdefault(("layers", *path[1:]), []).append(value)
    else:
      stacked[path] = value
  params = {p: jnp.stack(v) if isinstance(v, list) else v for p, v in stacked.items()}
  scanned.params = traverse_util.unflatten_dict(params)
  a, b = attention_maps(one, "same maps"), attention_maps(scanned, "same maps")
  np.testing.assert_allclose(a.maps["decoder"], b.maps["decoder"], atol=1e-5)


def test_an_encoder_decoder_has_encoder_decoder_and_cross_maps():
  subject = _subject("encdec", "t5_tiny", **TINY, scan_layers=False)
  maps = attention_maps(subject, "the cat sat", target="le chat")
  source, target = len("the cat sat") + 1, len("le chat") + 1  # bytes + EOS
  assert maps.maps["encoder"].shape == (2, 2, source, source)
  assert maps.maps["decoder"].shape == (2, 2, target, target)
  assert maps.maps["cross"].shape == (2, 2, target, source)
  assert (
    maps.rows["cross"] == maps.rows["decoder"] and maps.columns["cross"] == maps.rows["encoder"]
  )
  for m in maps.maps.values():
    np.testing.assert_allclose(m.sum(-1), 1.0, atol=1e-5)
  assert np.all(np.triu(maps.maps["decoder"], k=1) == 0.0)
  assert np.any(np.triu(maps.maps["encoder"], k=1) > 0.0)  # bidirectional
  batch, _ = encode(subject, "the cat sat", target="le chat")
  plain, _ = forward(subject, batch)
  with_maps, _ = forward(subject, batch, mutable=[MAPS])
  np.testing.assert_allclose(with_maps, plain, atol=1e-4)


def test_the_maps_do_not_depend_on_the_kernel_the_model_runs():
  """A splash model (which keeps no probabilities, and could not take 9 tokens) gives the
  einsum model's maps, and says which kernel it runs."""
  einsum = _subject("gpt", "tiny", **TINY, scan_layers=False, attention_impl="einsum")
  splash = _subject("gpt", "tiny", **TINY, scan_layers=False, attention_impl="splash_interpret")
  a, b = attention_maps(einsum, "kernels"), attention_maps(splash, "kernels")
  np.testing.assert_allclose(a.maps["decoder"], b.maps["decoder"], atol=1e-6)
  assert (a.kernel, b.kernel) == ("einsum", "splash_interpret")
