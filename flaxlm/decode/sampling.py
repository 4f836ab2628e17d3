"""Autoregressive decoding of decoders with a KV cache: greedy, temperature, top-k and top-p
(nucleus) sampling, and beam search (`beam_generate`).

Serving-shaped: one batch holds prompts of different lengths, padded on the right or the
left to P tokens. The prompt is prefilled in one pass; each row's tokens keep their own
positions (the cache stores them, so padding slots are never attended), and the loop is one
jitted `lax.while_loop` of at most `max_new_tokens` steps that stops as soon as every row
has emitted EOS. The KV cache carries logical axis names (`flaxlm.nn.layers.CACHE_AXES`), so it
is laid out over the mesh as the rules say (batch over data, kv heads over tensor). `to_bf16`
halves the weights' memory and runs the model (and its cache) in bfloat16.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from flaxlm.decode import beam_search as beam
from flaxlm.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 100
  temperature: float = 1.0  # 0 = greedy
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # 1 = off
  eos_id: int | None = None  # after EOS a row keeps emitting EOS; all rows ended: stop
  vocab_size: int = 0  # > 0: ids from here on (the model's padding rows) are never chosen
  no_repeat_ngram: int = 0  # > 0: no n-gram of this size twice among the new tokens


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """Sets logits outside the top-k / top-p set to -inf. logits: (B, V)."""
  if top_k and top_k < logits.shape[-1]:  # k as large as the vocabulary keeps every token
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
    before = jnp.cumsum(probs, axis=-1) - probs
    # At least index 0: with top_p <= 0 nothing is "before" it, and -1 would wrap to the end.
    cutoff_index = jnp.maximum(jnp.sum(before < top_p, axis=-1, keepdims=True) - 1, 0)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


def without_padded_vocab(logits: jax.Array, vocab_size: int) -> jax.Array:
  """logits (..., V) with ids from `vocab_size` on at -inf: the rows a model's vocabulary is
  padded with past the tokenizer's decode to nothing. `vocab_size` 0 leaves them."""
  if 0 < vocab_size < logits.shape[-1]:
    logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf)
  return logits


def without_repeated_ngrams(logits: jax.Array, new: jax.Array, i, size: int) -> jax.Array:
  """logits (B, V) with -inf at every token that would repeat an n-gram of `size` tokens
  already among the new tokens new[:, :i] (B, N), as Hugging Face's no_repeat_ngram_size,
  but over the new tokens only: a continuation may quote its prompt (a summary its text)."""
  b, n = new.shape
  start = jnp.arange(n)  # each earlier n-gram new[:, j : j + size], if wholly generated
  at = lambda idx: jnp.take(new, jnp.clip(idx, 0, n - 1), axis=1)
  match = jnp.broadcast_to(start + size - 1 < i, (b, n))
  for t in range(size - 1):  # its first size - 1 tokens equal the last size - 1 generated
    match = match & (at(start + t) == at(jnp.full((1,), i - size + 1 + t)))
  banned = jnp.zeros(logits.shape, jnp.int32).at[jnp.arange(b)[:, None], at(start + size - 1)]
  return jnp.where(banned.max(match.astype(jnp.int32)) > 0, -jnp.inf, logits)


def choose(logits: jax.Array, rng: jax.Array, c: SamplingConfig) -> jax.Array:
  """Next token ids (B,) from last-position logits (B, V)."""
  logits = without_padded_vocab(logits, c.vocab_size)
  if c.temperature == 0.0:
    return jnp.argmax(logits, axis=-1)
  logits = filter_logits(logits / c.temperature, c.top_k, c.top_p)
  return jax.random.categorical(rng, logits, axis=-1)


def to_bf16(model, params):
  """(model computing in bfloat16, its float parameters cast to bfloat16): half the weight
  memory for decoding; the KV cache follows the compute dtype."""
  model = model.clone(config=dataclasses.replace(model.config, dtype="bfloat16"))
  cast = lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x
  return model, jax.tree.map(cast, params)


def _empty_cache(model, batch: int, length: int):
  """A zero KV cache of `length` slots per row, shaped by the model's own init."""
  tokens = jnp.zeros((batch, length), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, decode=True)["cache"])
  return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)


def _forward(model, params, cache, tokens, positions, segment_ids=None):
  """-> (the cache with `tokens` written at its index, logits (B, T, V))."""
  logits, mutated = model.apply(
    {"params": params, "cache": cache},
    tokens,
    positions=positions,
    segment_ids=segment_ids,
    decode=True,
    mutable=["cache"],
  )
  return mutated["cache"], logits


@functools.partial(jax.jit, static_argnames=("model", "config", "pad_side"))
def generate(
  model,
  params,
  prompt: jax.Array,  # (B, P) int32, each row padded to P
  rng: jax.Array,
  config: SamplingConfig,
  lengths: jax.Array | None = None,  # (B,) tokens of each prompt; None: all P
  pad_side: str = "right",  # where the padding of a shorter prompt is
) -> jax.Array:
  """-> (B, P + max_new_tokens): row b holds its prompt's lengths[b] tokens, then its new
  tokens, then EOS (or 0 without an eos_id) up to the end."""
  b, p = prompt.shape
  n = config.max_new_tokens
  lengths = jnp.full((b,), p, jnp.int32) if lengths is None else lengths.astype(jnp.int32)
  offset = (p - lengths if pad_side == "left" else jnp.zeros_like(lengths))[:, None]  # (B, 1)
  slots = jnp.arange(p)[None, :]
  segments = ((slots >= offset) & (slots < offset + lengths[:, None])).astype(jnp.int32)
  positions = jnp.maximum(slots - offset, 0)  # each prompt starts at position 0

  forward = functools.partial(_forward, model, params)
  # Prefill every prompt in one pass; each row continues from its last prompt token.
  cache, logits = forward(_empty_cache(model, b, p + n), prompt, positions, segments)
  last = offset[:, 0] + lengths - 1
  logits = jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]  # (B, V)
  fill = 0 if config.eos_id is None else config.eos_id
  new = jnp.full((b, n), fill, jnp.int32)

  def cond(carry):
    i, _, _, _, done = carry
    return (i < n) & ~jnp.all(done)

  def body(carry):
    i, cache, logits, new, done = carry
    if config.no_repeat_ngram:
      logits = without_repeated_ngrams(logits, new, i, config.no_repeat_ngram)
    token = choose(logits, jax.random.fold_in(rng, i), config).astype(jnp.int32)
    if config.eos_id is not None:
      token = jnp.where(done, config.eos_id, token)
      done = done | (token == config.eos_id)
    new = jax.lax.dynamic_update_slice(new, token[:, None], (0, i))
    cache, logits = forward(cache, token[:, None], (lengths + i)[:, None])
    return i + 1, cache, logits[:, -1], new, done

  done = jnp.zeros((b,), bool)
  _, _, _, new, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), cache, logits, new, done))

  # Compact each row: its prompt tokens, its new tokens, then `fill`.
  j = jnp.arange(p + n)[None, :]
  from_prompt = jnp.take_along_axis(prompt, jnp.clip(j + offset, 0, p - 1), axis=1)
  from_new = jnp.take_along_axis(new, jnp.clip(j - lengths[:, None], 0, n - 1), axis=1)
  out = jnp.where(j < lengths[:, None] + n, from_new, fill)
  return jnp.where(j < lengths[:, None], from_prompt, out)


@functools.partial(
  jax.jit, static_argnames=("model", "beam_size", "max_new_tokens", "eos_id", "alpha", "vocab_size")
)
def beam_generate(
  model,
  params,
  prompt: jax.Array,  # (B, P) int32, each row right-padded to P
  lengths: jax.Array,  # (B,) tokens of each prompt, >= 1
  beam_size: int,
  max_new_tokens: int,
  eos_id: int,
  alpha: float = 0.6,
  vocab_size: int = 0,
) -> tuple[jax.Array, jax.Array]:
  """Beam search (`flaxlm.decode.beam_search`, GNMT length penalty) over a decoder's continuations:
  -> (new tokens (B, max_new_tokens), EOS-padded after the end; scores (B,), log-prob over
  the length penalty). Each prompt but its last token is prefilled once, the cache is copied
  to beam_size rows (row b * beam_size + j: beam j of prompt b), and the first beam step
  reads the prompt's last token, so the search starts from every row's own position."""
  b, p = prompt.shape
  k, n = beam_size, max_new_tokens
  lengths = lengths.astype(jnp.int32)
  slots = jnp.broadcast_to(jnp.arange(p), (b, p))
  before_last = (slots < lengths[:, None] - 1).astype(jnp.int32)
  cache, _ = _forward(model, params, _empty_cache(model, b, p + n), prompt, slots, before_last)
  batch_axis = 1 if getattr(model.config, "scan_layers", False) else 0  # nn.scan: layers first
  rows = jnp.repeat(jnp.arange(b), k)
  cache = beam.gather_rows(cache, rows, batch_axis)
  last = jnp.take_along_axis(prompt, lengths[:, None] - 1, axis=1)[rows]  # (N, 1)
  first_position = (lengths - 1)[rows]

  def step(cache, tokens, i):
    tokens = jnp.where(i == 0, last, tokens)  # beam_search's start token: the prompt's last
    cache, logits = _forward(model, params, cache, tokens, (first_position + i)[:, None])
    return without_padded_vocab(logits[:, -1], vocab_size), cache

  return beam.beam_search(
    step, cache, b, k, n, start_id=0, eos_id=eos_id, alpha=alpha,
    gather_cache=lambda c, r: beam.gather_rows(c, r, batch_axis),
  )  # fmt: skip


def _prompt_ids(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
  """Token ids of text prompts (an empty one starts from EOS, or token 0); refuses prompts
  that learned or sinusoidal positions cannot hold with `max_new_tokens` more."""
  start = tokenizer.eos_id if tokenizer.eos_id is not None else 0
  ids = [(tokenizer.encode(text) if text else []) or [start] for text in prompts]
  limit = getattr(model.config, "max_len", None)
  position = getattr(model.config, "position", "")
  longest = max(len(x) for x in ids)
  # Learned and sinusoidal positions are tables of max_len rows; JAX would clamp a position
  # past the end silently. RoPE has no such limit.
  if position in ("learned", "sinusoidal") and limit and longest + max_new_tokens > limit:
    raise DataError(
      f"prompt ({longest} tokens) + {max_new_tokens} new tokens exceeds the model's "
      f"max_len={limit} {position} positions; ask for fewer tokens"
    )
  return ids


def sample_texts(
  trainable,
  params,
  tokenizer,
  prompts: list[str],
  config: SamplingConfig,
  seed: int = 0,
  num_samples: int = 1,
  bf16: bool = False,
) -> list[list[str]]:
  """Continuations of several prompts, decoded as one batch (`num_samples` rows each, the
  prompts right-padded): [prompt][sample] -> the new text. An empty prompt starts from EOS
  (or token 0)."""
  model = trainable.model
  ids = _prompt_ids(model, tokenizer, prompts, config.max_new_tokens)
  longest = max(len(x) for x in ids)
  if tokenizer.eos_id is not None and config.eos_id is None:
    config = dataclasses.replace(config, eos_id=tokenizer.eos_id)
  if not config.vocab_size:
    config = dataclasses.replace(config, vocab_size=tokenizer.vocab_size)
  rows = [x for x in ids for _ in range(num_samples)]
  lengths = np.array([len(x) for x in rows], np.int32)
  batch = np.zeros((len(rows), longest), np.int32)
  for i, x in enumerate(rows):
    batch[i, : len(x)] = x
  if bf16:
    model, params = to_bf16(model, params)
  with trainable.context():
    out = generate(
      model, params, jnp.asarray(batch), jax.random.PRNGKey(seed), config, jnp.asarray(lengths)
    )
  out = jax.device_get(out)
  texts = []
  for i, (text, x) in enumerate(zip(prompts, ids, strict=True)):
    skip = len(x) if text else 1
    block = out[i * num_samples : (i + 1) * num_samples]
    texts.append([tokenizer.decode(row[skip : len(x) + config.max_new_tokens]) for row in block])
  return texts


def sample_text(
  trainable,
  params,
  tokenizer,
  prompt: str,
  config: SamplingConfig,
  seed: int = 0,
  num_samples: int = 1,
) -> str | list[str]:
  """Encodes `prompt` (empty: start from EOS/BOS or token 0), samples, decodes the new text."""
  texts = sample_texts(trainable, params, tokenizer, [prompt], config, seed, num_samples)[0]
  return texts[0] if num_samples == 1 else texts


def complete(
  trainable,
  params,
  tokenizer,
  prompts: list[list[int]],
  max_new_tokens: int,
  batch_size: int = 32,
  beam_size: int = 0,
  alpha: float = 0.6,
  no_repeat_ngram: int = 0,
) -> list[str]:
  """Continuations (decoded text, up to EOS) of token-id prompts, in order: greedy (with no
  n-gram of `no_repeat_ngram` tokens twice, if > 0), or beam search with `beam_size` >= 1
  beams and length penalty `alpha`. Prompts go in batches, right-padded to widths of a power
  of two times 16, so a few programs compile."""
  if beam_size and no_repeat_ngram:
    raise ConfigError("no_repeat_ngram applies to greedy decoding; set beam_size=0 with it")
  config = SamplingConfig(
    max_new_tokens, temperature=0.0, eos_id=tokenizer.eos_id, vocab_size=tokenizer.vocab_size,
    no_repeat_ngram=no_repeat_ngram,
  )  # fmt: skip
  out: list[str] = []
  for first in range(0, len(prompts), batch_size):
    chunk = prompts[first : first + batch_size]
    width = 16
    while width < max(len(p) for p in chunk):
      width *= 2
    batch = np.zeros((batch_size, width), np.int32)  # a full batch: one shape per width
    lengths = np.ones(batch_size, np.int32)
    for i, p in enumerate(chunk):
      batch[i, : len(p)], lengths[i] = p, len(p)
    with trainable.context():
      if beam_size:
        new, _ = beam_generate(
          trainable.model, params, jnp.asarray(batch), jnp.asarray(lengths), beam_size,
          max_new_tokens, tokenizer.eos_id, alpha, tokenizer.vocab_size,
        )  # fmt: skip
        rows = [row.tolist() for row in jax.device_get(new)]
      else:
        tokens = generate(
          trainable.model, params, jnp.asarray(batch), jax.random.PRNGKey(0), config,
          jnp.asarray(lengths),
        )  # fmt: skip
        rows = [row[len(p) : len(p) + max_new_tokens].tolist()
                for p, row in zip(chunk, jax.device_get(tokens), strict=False)]  # fmt: skip
    for new in rows[: len(chunk)]:
      if tokenizer.eos_id in new:
        new = new[: new.index(tokenizer.eos_id)]
      out.append(tokenizer.decode(new))
  return out


def beam_texts(
  trainable, params, tokenizer, prompts: list[str], max_new_tokens: int, beam_size: int,
  alpha: float = 0.6, batch_size: int = 32,
) -> list[str]:  # fmt: skip
  """The best beam's continuation (new text, up to EOS) of each text prompt, as generate.py
  --beam_size decodes a decoder; prompts are encoded as `sample_texts` encodes them."""
  ids = _prompt_ids(trainable.model, tokenizer, prompts, max_new_tokens)
  return complete(trainable, params, tokenizer, ids, max_new_tokens, batch_size, beam_size, alpha)
