"""Beam search on toy Markov-like models: beam 1 against greedy, a wide beam against
brute-force enumeration (alpha 0 and 0.6), batch rows kept apart, early stopping, and jit with a
custom cache layout."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxlm.decode.beam_search import beam_search, length_penalty

START, EOS = 0, 2
HASH = 61  # buckets of the history hash the toy models keep in their cache


def make_model(seed: int, v: int, t: int, rows: int = 1, eos_logit=None, stop_prob: float = 0.0):
  """step_fn whose logits depend on (table row, position, last token, hash of earlier tokens).

  The hash of the tokens before the last one lives only in the cache, so a wrongly gathered
  cache changes the scores; `count` (N, 1) and the scalar `index` must track the position or logits turn NaN.
  eos_logit: if set, EOS gets this logit, or 30 (always the argmax) with probability stop_prob.
  """
  rng = np.random.default_rng(seed)
  first = rng.normal(size=(rows, t, v, v)) * 2 - 2.0 * (
    np.arange(v) == EOS
  )  # [row, position, last token] -> logits
  second = rng.normal(size=(rows, HASH, v)) * 2  # [row, hash of earlier tokens] -> logits
  if eos_logit is not None:
    first[..., EOS] = np.where(rng.random(first.shape[:-1]) < stop_prob, 30.0, eos_logit)
    second[..., EOS] = 0.0
  first, second = jnp.asarray(first, jnp.float32), jnp.asarray(second, jnp.float32)

  def step_fn(cache, tokens, position):
    tok, row = tokens[:, 0], cache["row"]
    logits = first[row, position, tok] + second[row, cache["hist"]]
    ok = (cache["count"][:, 0] == position) & (cache["index"] == position)
    logits = jnp.where(ok[:, None], logits, jnp.nan)
    hist = (cache["hist"] * 7 + tok + 1) % HASH
    new = dict(row=row, hist=hist, count=cache["count"] + 1, index=cache["index"] + 1)
    return logits, new

  return step_fn


def make_cache(rows, beam_size: int):
  """Cache tiled to N = len(rows) * beam_size; `rows` picks each batch item's table."""
  row = jnp.repeat(jnp.asarray(rows, jnp.int32), beam_size)
  n = row.shape[0]
  return dict(
    row=row,
    hist=jnp.zeros((n,), jnp.int32),
    count=jnp.zeros((n, 1), jnp.int32),
    index=jnp.int32(0),
  )


def greedy(step_fn, cache, max_len: int):
  n = cache["row"].shape[0]
  tok, done, score, out = jnp.full((n, 1), START, jnp.int32), jnp.zeros(n, bool), 0.0, []
  for t in range(max_len):
    logits, cache = step_fn(cache, tok, jnp.int32(t))
    nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits)[jnp.arange(n), nxt]
    score = score + jnp.where(done, 0.0, logp)
    out.append(jnp.where(done, EOS, nxt))
    done = done | (nxt == EOS)
    tok = nxt[:, None]
  return np.stack(out, axis=1), np.asarray(score)


def brute_force(step_fn, row: int, v: int, max_len: int, alpha: float) -> dict:
  """Every hypothesis (ending at EOS or at max_len, padded with EOS) -> its score."""
  seqs = np.array(list(itertools.product(range(v), repeat=max_len)), np.int32)
  m = len(seqs)
  cache = make_cache([row], m)
  inputs = np.concatenate([np.full((m, 1), START, np.int32), seqs[:, :-1]], axis=1)
  logps = []
  for t in range(max_len):
    logits, cache = step_fn(cache, jnp.asarray(inputs[:, t : t + 1]), jnp.int32(t))
    logps.append(np.asarray(jax.nn.log_softmax(logits))[np.arange(m), seqs[:, t]])
  cum = np.cumsum(np.stack(logps, axis=1), axis=1)
  is_eos = seqs == EOS
  end = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1), max_len - 1)
  scores = cum[np.arange(m), end] / np.asarray(length_penalty(end + 1, alpha))
  hyps = {}
  for seq, e, s in zip(seqs, end, scores, strict=True):
    hyps[tuple(seq[: e + 1]) + (EOS,) * (max_len - e - 1)] = float(s)
  return hyps


def rescore(step_fn, row: int, tokens, alpha: float) -> float:
  """The score of one hypothesis, fed token by token through a fresh batch-1 cache."""
  cache, last, logp = make_cache([row], 1), START, 0.0
  for t, tok in enumerate(np.asarray(tokens).tolist()):
    logits, cache = step_fn(cache, jnp.full((1, 1), last, jnp.int32), jnp.int32(t))
    logp += float(jax.nn.log_softmax(logits)[0, tok])
    if tok == EOS:
      break
    last = tok
  return logp / float(length_penalty(t + 1, alpha))


def test_length_penalty():
  assert float(length_penalty(7, 0.0)) == 1.0
  np.testing.assert_allclose(length_penalty(3, 0.6), (8 / 6) ** 0.6, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_one_is_greedy(seed):
  # Ordinary random tables: EOS competes like any token (a hypothesis ends only when EOS is
  # among the beam's best extensions, so beam 1 with alpha 0 is greedy decoding).
  step_fn = make_model(seed, v=7, t=8, rows=3)
  tokens, scores = beam_search(step_fn, make_cache([0, 1, 2], 1), 3, 1, 8, START, EOS, alpha=0.0)
  want_tokens, want_scores = greedy(step_fn, make_cache([0, 1, 2], 1), 8)
  np.testing.assert_array_equal(tokens, want_tokens)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force(alpha, seed):
  v, max_len = 4, 4
  step_fn = make_model(seed, v, max_len)
  hyps = brute_force(step_fn, 0, v, max_len, alpha)
  best = max(hyps, key=hyps.get)
  # 27 = (v - 1) ** (max_len - 1) non-EOS prefixes: the beam keeps them all, so it is exact.
  tokens, scores = beam_search(step_fn, make_cache([0], 27), 1, 27, max_len, START, EOS, alpha)
  assert tuple(np.asarray(tokens[0]).tolist()) == best
  np.testing.assert_allclose(scores[0], hyps[best], rtol=1e-5)
  # A narrow beam returns a real hypothesis with its true score, no better than the best.
  tokens, scores = beam_search(step_fn, make_cache([0], 2), 1, 2, max_len, START, EOS, alpha)
  hyp = tuple(np.asarray(tokens[0]).tolist())
  np.testing.assert_allclose(scores[0], hyps[hyp], rtol=1e-5)
  assert hyps[hyp] <= hyps[best]


@pytest.mark.parametrize("seed", [0, 2])
def test_batch_rows_do_not_mix(seed):
  """Batch items with different tables match their batch-1 runs, and each score is the true
  score of its tokens: 8 steps of reordering 3 beams, so a wrong cache gather shows."""
  step_fn = make_model(seed, v=6, t=8, rows=2)
  k, max_len, alpha = 3, 8, 0.6
  tokens, scores = beam_search(step_fn, make_cache([0, 1], k), 2, k, max_len, START, EOS, alpha)
  for b in range(2):
    one_tokens, one_scores = beam_search(
      step_fn, make_cache([b], k), 1, k, max_len, START, EOS, alpha
    )
    np.testing.assert_array_equal(tokens[b], one_tokens[0])
    np.testing.assert_allclose(scores[b], one_scores[0], rtol=1e-6)
    np.testing.assert_allclose(scores[b], rescore(step_fn, b, tokens[b], alpha), rtol=1e-5)
  assert not np.array_equal(tokens[0], tokens[1])


def test_early_stop():
  step_fn = make_model(0, v=5, t=10, eos_logit=100.0)
  positions = []

  def counting_step_fn(cache, tokens, position):
    jax.debug.callback(lambda p: positions.append(int(p)), position)
    return step_fn(cache, tokens, position)

  tokens, scores = beam_search(counting_step_fn, make_cache([0], 2), 1, 2, 10, START, EOS)
  np.testing.assert_array_equal(tokens, np.full((1, 10), EOS))
  np.testing.assert_allclose(scores, [0.0], atol=1e-5)
  # Step 0 finishes the EOS hypothesis; step 1 fills the second finished slot; then no alive
  # hypothesis (log-prob ~ -200) can beat the worst finished one (~ -100).
  assert positions == [0, 1]


def test_jit_with_custom_cache_layout():
  """Under jit with static args, with a cache stacked like nn.scan's (batch on axis 1)."""
  v, max_len, k, alpha = 4, 4, 27, 0.6
  step_fn = make_model(1, v, max_len)
  hyps = brute_force(step_fn, 0, v, max_len, alpha)
  stack = functools.partial(jax.tree.map, lambda x: x[None] if x.ndim else x)
  unstack = functools.partial(jax.tree.map, lambda x: x[0] if x.ndim else x)

  def stacked_step_fn(cache, tokens, position):
    logits, cache = step_fn(unstack(cache), tokens, position)
    return logits, stack(cache)

  def gather_axis1(cache, rows):
    return jax.tree.map(lambda x: jnp.take(x, rows, axis=1) if x.ndim >= 2 else x, cache)

  search = jax.jit(
    beam_search, static_argnums=(0, 2, 3, 4, 5, 6, 7), static_argnames="gather_cache"
  )
  cache = stack(make_cache([0], k))
  args = (stacked_step_fn, cache, 1, k, max_len, START, EOS, alpha)
  tokens, scores = search(*args, gather_cache=gather_axis1)
  best = max(hyps, key=hyps.get)
  assert tuple(np.asarray(tokens[0]).tolist()) == best
  np.testing.assert_allclose(scores[0], hyps[best], rtol=1e-5)
  eager_tokens, eager_scores = beam_search(*args, gather_cache=gather_axis1)
  np.testing.assert_array_equal(tokens, eager_tokens)
  np.testing.assert_allclose(scores, eager_scores, rtol=1e-6)
