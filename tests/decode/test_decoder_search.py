"""Decoder search beyond plain greedy: beam search over continuations (sampling.beam_generate)
-- one beam without a length penalty is greedy decoding, every returned score is the
sequence's log-probability under a cache-free forward pass, ragged prompts in one batch do
not mix -- and greedy decoding that never repeats an n-gram of its own output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_sampling import LEARNED, LLAMA, full_logits_fn, ragged_prompts, random_params

from flaxlm.decode import sampling
from flaxlm.decode.sampling import SamplingConfig
from flaxlm.models import gpt

NEW, EOS = 6, 5


def beam(config, batch, lengths, k, alpha=0.0):
  model, params = gpt.GPT(config), random_params(config)
  tokens, scores = sampling.beam_generate(model, params, batch, lengths, k, NEW, EOS, alpha)
  return np.asarray(tokens), np.asarray(scores)


def log_prob(config, prompt, new) -> float:
  """log p(new | prompt) from one forward pass without a cache, up to and including EOS."""
  if EOS in new:
    new = new[: list(new).index(EOS) + 1]
  ids = np.concatenate([prompt, new]).astype(np.int32)
  logits = full_logits_fn(config)({"params": random_params(config)}, jnp.asarray(ids[None]))
  logp = jax.nn.log_softmax(np.asarray(logits[0], np.float32), axis=-1)
  return float(sum(logp[len(prompt) - 1 + t, tok] for t, tok in enumerate(new)))


@pytest.mark.parametrize("config", [LEARNED, LLAMA], ids=["learned", "llama_scan"])
def test_one_beam_without_penalty_is_greedy(config):
  batch, lengths, alone = ragged_prompts("right")
  tokens, _ = beam(config, batch, lengths, k=1)
  greedy = SamplingConfig(max_new_tokens=NEW, temperature=0.0, eos_id=EOS)
  model, params = gpt.GPT(config), random_params(config)
  for row, p in enumerate(alone):
    out = sampling.generate(model, params, jnp.asarray(p[None]), jax.random.PRNGKey(0), greedy)
    np.testing.assert_array_equal(tokens[row], np.asarray(out)[0, len(p) :], f"row {row}")


@pytest.mark.parametrize("config", [LEARNED, LLAMA], ids=["learned", "llama_scan"])
def test_scores_are_log_probs_and_rows_do_not_mix(config):
  """Four beams over four ragged prompts: each row's score is its continuation's log-prob
  (alpha 0) recomputed without a cache, and equals the search over that prompt alone."""
  batch, lengths, alone = ragged_prompts("right")
  tokens, scores = beam(config, batch, lengths, k=4)
  greedy, _ = beam(config, batch, lengths, k=1)
  for row, p in enumerate(alone):
    assert scores[row] == pytest.approx(log_prob(config, p, tokens[row]), abs=1e-4)
    # a wider beam finds a continuation at least as likely as greedy's on these prompts
    assert scores[row] >= log_prob(config, p, greedy[row]) - 1e-4
    single, single_score = beam(config, jnp.asarray(p[None]), jnp.asarray([len(p)]), k=4)
    np.testing.assert_array_equal(tokens[row], single[0], f"row {row}")
    assert scores[row] == pytest.approx(single_score[0], abs=1e-4)


def banned(new, i, size):
  logits = jnp.zeros((len(new), 6))
  out = sampling.without_repeated_ngrams(logits, jnp.asarray(new), i, size)
  return np.isinf(np.asarray(out)).astype(int).tolist()


def test_repeated_ngrams_are_banned_from_the_generated_tokens_only():
  new = [[1, 2, 3, 1, 2, 0, 0, 0], [4, 4, 4, 0, 0, 0, 0, 0]]
  # step 5: row 0 ends in (1, 2), already followed by 3; row 1's (4, 0) and (0, 0) are new
  assert banned(new, 5, 3) == [[0, 0, 0, 1, 0, 0], [0] * 6]
  # step 3, bigrams: row 0 ends in 3 (never followed yet), row 1 in 4 (followed by 4)
  assert banned(new, 3, 2) == [[0] * 6, [0, 0, 0, 0, 1, 0]]
  assert banned(new, 2, 3) == [[0] * 6, [0] * 6]  # no earlier trigram is complete yet
  assert banned(new, 4, 1) == [[0, 1, 1, 1, 0, 0], [1, 0, 0, 0, 1, 0]]  # size 1: no token twice


def repeated(row, size):
  grams = [tuple(row[j : j + size]) for j in range(len(row) - size + 1)]
  return len(grams) != len(set(grams))


def test_greedy_without_repeated_bigrams():
  """On prompts whose plain greedy continuation repeats a bigram, the constrained one never
  does, and it agrees with plain greedy up to the first token that would have repeated."""
  prompt = jnp.asarray(np.random.default_rng(0).integers(0, 64, (8, 4)), jnp.int32)
  plain = SamplingConfig(max_new_tokens=12, temperature=0.0)
  model, params = gpt.GPT(LEARNED), random_params(LEARNED)
  free = np.asarray(sampling.generate(model, params, prompt, jax.random.PRNGKey(0), plain))[:, 4:]
  config = SamplingConfig(max_new_tokens=12, temperature=0.0, no_repeat_ngram=2)
  out = np.asarray(sampling.generate(model, params, prompt, jax.random.PRNGKey(0), config))[:, 4:]
  assert sum(repeated(list(r), 2) for r in free) >= 2  # the constraint has work to do
  for f, o in zip(free, out, strict=True):
    assert not repeated(list(o), 2)
    first = next((t for t in range(2, 12) if repeated(list(f[: t + 1]), 2)), 12)
    np.testing.assert_array_equal(o[:first], f[:first])
