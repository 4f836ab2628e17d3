"""Sampling: top-k / top-p filtering, greedy decoding against a cache-free reference, seeded
sampling, EOS handling and the max_len guard of sample_text."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxlm import sampling, sharding
from flaxlm.data import tokenizers
from flaxlm.models import gpt
from flaxlm.objectives import causal_lm
from flaxlm.sampling import SamplingConfig
from flaxlm.training import StepConfig, Trainable, token_init

VOCAB, B, P, NEW = 64, 4, 4, 12  # P prompt tokens + NEW new ones = max_len
LEARNED = gpt.GPTConfig(
  vocab_size=VOCAB, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64, max_len=P + NEW
)
LLAMA = dataclasses.replace(
  LEARNED,
  position="rope",
  norm="rmsnorm",
  activation="silu",
  gated_mlp=True,
  num_kv_heads=2,
  use_bias=False,
  tie_embeddings=False,
  scan_layers=True,
)
GREEDY = SamplingConfig(max_new_tokens=NEW, temperature=0.0)


@functools.cache
def random_params(config):
  """numpy-drawn weights, spread enough that the next-token distributions are far from flat."""
  abstract = jax.eval_shape(
    lambda: gpt.GPT(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  )
  rng = np.random.default_rng(0)
  return jax.tree.map(
    lambda a: jnp.asarray(rng.normal(scale=0.3, size=a.shape), a.dtype), nn.meta.unbox(abstract)
  )


@functools.cache
def full_logits_fn(config):
  return jax.jit(gpt.GPT(config).apply)


def prompts(seed=0, batch=B):
  return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (batch, P)), jnp.int32)


def generate(config, prompt, sampling_config, seed=0):
  model = gpt.GPT(config)
  out = sampling.generate(
    model, random_params(config), prompt, jax.random.PRNGKey(seed), sampling_config
  )
  return np.asarray(out)


# ----------------------------------------------------------------------------- filter_logits


def test_top_k_keeps_exactly_the_k_largest():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(5, 50)), jnp.float32)
  for k in (1, 3, 17, 50):
    out = np.asarray(sampling.filter_logits(logits, k, 1.0))
    kept = np.isfinite(out)
    assert (kept.sum(axis=-1) == k).all()
    np.testing.assert_array_equal(out[kept], np.asarray(logits)[kept])  # survivors unchanged
    top = np.argsort(-np.asarray(logits), axis=-1)[:, :k]
    for row in range(5):
      assert set(np.flatnonzero(kept[row])) == set(top[row])
  assert (out == np.asarray(logits)).all()  # k = V keeps everything


def nucleus(logits_row, p):
  """Reference: the smallest set of most likely tokens whose probability reaches p."""
  probs = np.exp(logits_row - logits_row.max())
  probs /= probs.sum()
  order = np.argsort(-probs)
  size = int(np.searchsorted(np.cumsum(probs[order]), p)) + 1  # first prefix with mass >= p
  return set(order[: min(size, len(order))])


@pytest.mark.parametrize("p", [0.0, 1e-6, 0.1, 0.5, 0.9, 0.999])
def test_top_p_keeps_the_smallest_set_reaching_p(p):
  logits = np.random.default_rng(1).normal(scale=2.0, size=(6, 40)).astype(np.float32)
  out = np.asarray(sampling.filter_logits(jnp.asarray(logits), 0, p))
  for row in range(6):
    kept = set(np.flatnonzero(np.isfinite(out[row])))
    assert kept == nucleus(logits[row], p), (row, p)
    assert int(np.argmax(logits[row])) in kept  # the most likely token always stays
    probs = np.exp(logits[row] - logits[row].max())
    probs /= probs.sum()
    if len(kept) > 1:  # smallest: without its least likely member the set falls short of p
      assert probs[list(kept)].sum() - probs[list(kept)].min() < p


def test_top_p_is_off_at_one_and_composes_with_top_k():
  logits = jnp.asarray(np.random.default_rng(2).normal(size=(3, 20)), jnp.float32)
  np.testing.assert_array_equal(sampling.filter_logits(logits, 0, 1.0), logits)
  both = np.asarray(sampling.filter_logits(logits, 5, 0.999))
  assert (np.isfinite(both).sum(axis=-1) <= 5).all()  # top-p inside the top-5, never beyond
  top_k = np.asarray(sampling.filter_logits(logits, 5, 1.0))
  narrower = np.asarray(sampling.filter_logits(logits, 5, 0.5))
  assert (np.isfinite(narrower).sum(-1) < np.isfinite(top_k).sum(-1)).any()  # p cuts further
  assert (np.isfinite(narrower) <= np.isfinite(top_k)).all()


def test_choose_samples_the_filtered_tempered_distribution():
  """Draws follow softmax(logits / T) renormalized over the top-p set, and never leave it."""
  logits = jnp.asarray([[2.0, 1.5, 1.0, 0.0, -1.0, -3.0]])
  config = SamplingConfig(temperature=0.5, top_p=0.9)
  keys = jax.random.split(jax.random.PRNGKey(0), 4000)
  draws = np.asarray(jax.vmap(lambda k: sampling.choose(logits, k, config))(keys))[:, 0]
  tempered = np.asarray(logits[0]) / 0.5
  allowed = sorted(nucleus(tempered, 0.9))
  assert set(draws) <= set(allowed) and len(set(draws)) == len(allowed) > 1
  probs = np.exp(tempered[allowed] - tempered.max())
  probs /= probs.sum()
  freqs = np.array([(draws == t).mean() for t in allowed])
  np.testing.assert_allclose(freqs, probs, atol=0.03)
  greedy = sampling.choose(logits, jax.random.PRNGKey(0), SamplingConfig(temperature=0.0))
  assert int(greedy[0]) == 0


# ----------------------------------------------------------------------------- generate


@pytest.mark.parametrize("config", [LEARNED, LLAMA], ids=["learned", "llama_scan"])
def test_greedy_generate_equals_argmax_over_full_forward(config):
  """Cached greedy decoding picks the argmax of a fresh, cache-free forward pass at every step."""
  prompt = prompts()
  out = generate(config, prompt, GREEDY)
  assert out.shape == (B, P + NEW) and out.dtype == np.int32
  np.testing.assert_array_equal(out[:, :P], prompt)
  ref = np.zeros((B, P + NEW), np.int32)
  ref[:, :P] = prompt
  for t in range(P, P + NEW):  # causal: the zeros after t do not affect the logits at t - 1
    logits = full_logits_fn(config)({"params": random_params(config)}, jnp.asarray(ref))
    ref[:, t] = np.argmax(np.asarray(logits[:, t - 1]), axis=-1)
  np.testing.assert_array_equal(out, ref)
  assert len(set(out[:, P:].ravel())) > 2  # not a degenerate model repeating one token


SAMPLE = SamplingConfig(max_new_tokens=NEW, temperature=1.0)
TOP3 = SamplingConfig(max_new_tokens=NEW, temperature=1.0, top_k=3)


def ranks_of_sampled_tokens(config, out):
  """Rank (0 = most likely) of each new token under the model's distribution at its step."""
  logits = np.asarray(full_logits_fn(config)({"params": random_params(config)}, jnp.asarray(out)))
  step_logits = logits[:, P - 1 : -1]  # (B, NEW, V): predicts tokens P .. P + NEW - 1
  chosen = np.take_along_axis(step_logits, out[:, P:, None], axis=-1)
  return (step_logits > chosen).sum(axis=-1)


def test_sampling_is_seeded():
  """The same seed reproduces a sample; another seed gives another one."""
  prompt = prompts()
  a, a_again, b = (generate(LEARNED, prompt, SAMPLE, seed) for seed in (0, 0, 1))
  np.testing.assert_array_equal(a, a_again)
  np.testing.assert_array_equal(a[:, :P], prompt)
  assert (a[:, P:] != b[:, P:]).mean() > 0.3
  # Without top-k, sampling reaches beyond the 3 most likely tokens (so the next test can fail).
  assert ranks_of_sampled_tokens(LEARNED, a).max() >= 3


def test_top_k_sampling_stays_in_the_top_k():
  for seed in (0, 1):
    out = generate(LEARNED, prompts(), TOP3, seed)
    ranks = ranks_of_sampled_tokens(LEARNED, out)
    assert ranks.max() <= 2, ranks
    assert ranks.min() == 0 and (ranks > 0).any()  # it samples, it is not greedy


def test_after_eos_a_row_keeps_emitting_eos():
  """Up to its first EOS a row is unchanged; from there on it holds only EOS."""
  prompt = prompts()
  free = generate(LEARNED, prompt, GREEDY)
  eos = int(free[0, P + 3])  # greedy row 0 emits this at step 3
  out = generate(LEARNED, prompt, dataclasses.replace(GREEDY, eos_id=eos))
  expected = free.copy()
  for row in range(B):
    hits = np.flatnonzero(free[row, P:] == eos)
    if len(hits):
      expected[row, P + hits[0] :] = eos
  np.testing.assert_array_equal(out, expected)
  assert (expected != free).any()  # EOS really cut something off


# ----------------------------------------------------------------------------- sample_text


def trainable_for(config):
  return Trainable(
    model=gpt.GPT(config),
    optimizer=optax.sgd(0.1),
    schedule=optax.constant_schedule(0.1),
    mesh=sharding.make_mesh({}, devices=jax.devices()[:1]),
    rules=sharding.DEFAULT_RULES,
    loss=causal_lm,
    step_config=StepConfig(),
    init_params=token_init(gpt.GPT(config), 1, 8),
  )


CHARS = tokenizers.CharTokenizer("abcdefghijklmnopqrstuvwxyz")


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_sample_text_refuses_to_run_past_the_position_table(position):
  """Learned and sinusoidal positions exist only up to max_len: asking for more is a clear error
  (JAX would otherwise clamp the out-of-range positions and sample garbage silently)."""
  config = dataclasses.replace(LEARNED, position=position)
  trainable = trainable_for(config)
  with pytest.raises(ValueError, match=r"prompt \(5 tokens\) \+ 12 new tokens exceeds.*max_len=16"):
    sampling.sample_text(trainable, random_params(config), CHARS, "abcde", GREEDY)
  with pytest.raises(ValueError, match="max_len=16"):  # an empty prompt starts from one token
    sampling.sample_text(
      trainable, random_params(config), CHARS, "", dataclasses.replace(GREEDY, max_new_tokens=16)
    )


def test_sample_text_decodes_the_greedy_continuation():
  """At exactly max_len tokens sample_text runs, and returns the decoded new tokens only."""
  trainable = trainable_for(LEARNED)
  params = random_params(LEARNED)
  texts = sampling.sample_text(trainable, params, CHARS, "abcd", GREEDY, num_samples=B)
  assert isinstance(texts, list) and len(texts) == B and len(set(texts)) == 1
  prompt = jnp.asarray([CHARS.encode("abcd")] * B, jnp.int32)
  out = generate(LEARNED, prompt, GREEDY)
  assert texts[0] == CHARS.decode(out[0, P:])
