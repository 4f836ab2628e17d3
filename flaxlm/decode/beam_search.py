"""Beam search with a GNMT length penalty, as in T5X / tensor2tensor.

Shapes are fixed (batch, beam, max_len) so the whole search is one `lax.while_loop`, jittable
with the ints, ids, alpha and step_fn static. Hypotheses that emit EOS move to a "finished" set
of beam_size per batch item when EOS is among the beam_size best extensions (so beam 1 with
alpha 0 is greedy decoding); the loop stops early once no alive hypothesis can beat the worst
finished one. Rows of N = batch * beam_size are laid out batch-major: row b*beam_size + k.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def length_penalty(length, alpha: float):
  """GNMT (Wu et al. 2016): ((5 + length) / 6) ** alpha; alpha = 0 gives 1 (pure log-prob)."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _take_rows(cache, rows: jax.Array, n: int):
  """Default cache reorder: rows along axis 0 of every leaf with leading dim N; others as is."""
  return jax.tree.map(
    lambda x: jnp.take(x, rows, axis=0) if jnp.ndim(x) >= 1 and jnp.shape(x)[0] == n else x,
    cache,
  )


def gather_rows(cache, rows: jax.Array, batch_axis: int = 0):
  """Every cache array's batch rows taken at `rows` along `batch_axis` (1 for nn.scan-stacked
  layers); arrays with nothing past that axis (scalars, per-layer cache indices) stay."""
  return jax.tree.map(
    lambda x: jnp.take(x, rows, axis=batch_axis) if x.ndim > batch_axis + 1 else x, cache
  )


def beam_search(
  step_fn,
  cache,
  batch_size: int,
  beam_size: int,
  max_len: int,
  start_id: int,
  eos_id: int,
  alpha: float = 0.6,
  gather_cache=None,
) -> tuple[jax.Array, jax.Array]:
  """The best hypothesis per batch item: tokens (batch, max_len) int32, scores (batch,) float32.

  step_fn(cache, tokens (N, 1) int32, position int32 scalar) -> (logits (N, V), new_cache),
  with `cache` already tiled to N rows. gather_cache(cache, rows (N,) int32) -> cache reorders
  the cache to the surviving beams' source rows; the default takes axis 0 of leaves with
  leading dim N (pass your own for e.g. nn.scan-stacked caches with the batch on axis 1).
  Tokens exclude the start token and are padded with eos_id after the EOS that ended them.
  Scores are log-prob / length_penalty(length incl. EOS). Hypotheses still alive after
  max_len tokens compete as finished ones of length max_len.
  """
  b, k, n = batch_size, beam_size, batch_size * beam_size
  if gather_cache is None:
    gather_cache = functools.partial(_take_rows, n=n)
  neg_inf = jnp.float32(-jnp.inf)
  seqs = jnp.full((b, k, max_len), eos_id, jnp.int32)
  # Only beam 0 is live at the start, so the first step does not yield k copies of one token.
  alive_lp = jnp.broadcast_to(jnp.where(jnp.arange(k) == 0, 0.0, neg_inf), (b, k))
  state = (jnp.int32(0), jnp.bool_(False), cache, seqs, alive_lp, seqs, jnp.full((b, k), neg_inf))

  def cond(state):
    i, done = state[:2]
    return (i < max_len) & ~done

  def body(state):
    i, _, cache, alive_seq, alive_lp, fin_seq, fin_score = state
    last = jnp.where(i == 0, start_id, alive_seq[:, :, jnp.maximum(i - 1, 0)])
    logits, cache = step_fn(cache, last.reshape(n, 1).astype(jnp.int32), i)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    v = logp.shape[-1]
    cand = (alive_lp[:, :, None] + logp.reshape(b, k, v)).reshape(b, k * v)
    # 2k candidates: at most k end in EOS (one per beam), so k non-EOS ones always remain.
    top_lp, top_idx = jax.lax.top_k(cand, min(2 * k, k * v))
    src, tok = top_idx // v, top_idx % v
    seq = jnp.take_along_axis(alive_seq, src[:, :, None], axis=1).at[:, :, i].set(tok)
    is_eos = tok == eos_id

    # Finished: EOS candidates among the k best (the beam proper: so beam 1 with alpha 0 is
    # greedy decoding exactly), plus every candidate once max_len is reached; keep the best k.
    ended = (is_eos & (jnp.arange(top_lp.shape[1]) < k)) | (i + 1 == max_len)
    new_score = jnp.where(ended, top_lp / length_penalty(i + 1, alpha), neg_inf)
    fin_score, idx = jax.lax.top_k(jnp.concatenate([fin_score, new_score], axis=1), k)
    fin_seq = jnp.take_along_axis(jnp.concatenate([fin_seq, seq], 1), idx[:, :, None], axis=1)

    # Alive: the best k non-EOS candidates; the cache follows their source beams.
    alive_lp, idx = jax.lax.top_k(jnp.where(is_eos, neg_inf, top_lp), k)
    alive_seq = jnp.take_along_axis(seq, idx[:, :, None], axis=1)
    rows = jnp.take_along_axis(src, idx, axis=1) + jnp.arange(b)[:, None] * k
    cache = gather_cache(cache, rows.reshape(n).astype(jnp.int32))

    # Log-probs only fall, so an alive hypothesis scores at most its log-prob over the largest
    # penalty still ahead (lp is monotone in length: one of the two ends of [i + 2, max_len]).
    best_lp = jnp.maximum(length_penalty(i + 2, alpha), length_penalty(max_len, alpha))
    done = jnp.all(fin_score[:, -1] >= alive_lp[:, 0] / best_lp)
    return i + 1, done, cache, alive_seq, alive_lp, fin_seq, fin_score

  *_, fin_seq, fin_score = jax.lax.while_loop(cond, body, state)
  return fin_seq[:, 0], fin_score[:, 0]
