"""Autoregressive sampling with a KV cache: greedy, temperature, top-k and top-p (nucleus).

Shapes are fixed (prompt P + new N tokens) so the whole loop is one jitted `lax.fori_loop`.
Prompts of one batch share the same length.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from flaxlm.errors import DataError


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 100
  temperature: float = 1.0  # 0 = greedy
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # 1 = off
  eos_id: int | None = None  # after EOS a row keeps emitting EOS


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """Sets logits outside the top-k / top-p set to -inf. logits: (B, V)."""
  if top_k:
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


def choose(logits: jax.Array, rng: jax.Array, c: SamplingConfig) -> jax.Array:
  """Next token ids (B,) from last-position logits (B, V)."""
  if c.temperature == 0.0:
    return jnp.argmax(logits, axis=-1)
  logits = filter_logits(logits / c.temperature, c.top_k, c.top_p)
  return jax.random.categorical(rng, logits, axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "config"))
def generate(model, params, prompt: jax.Array, rng: jax.Array, config: SamplingConfig) -> jax.Array:
  """prompt (B, P) int32 -> (B, P + max_new_tokens) tokens."""
  b, p = prompt.shape
  total = p + config.max_new_tokens
  cache = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((b, total), jnp.int32), decode=True)[
      "cache"
    ]
  )
  cache = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), cache)

  def forward(cache, tokens, start):
    positions = start + jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    logits, mutated = model.apply(
      {"params": params, "cache": cache},
      tokens,
      positions=positions,
      decode=True,
      mutable=["cache"],
    )
    return mutated["cache"], logits[:, -1]

  cache, logits = forward(cache, prompt, 0)  # prefill the prompt in one pass
  out = jnp.zeros((b, total), jnp.int32).at[:, :p].set(prompt)
  done = jnp.zeros((b,), bool)

  def body(i, carry):
    cache, logits, out, done = carry
    token = choose(logits, jax.random.fold_in(rng, i), config)
    if config.eos_id is not None:
      token = jnp.where(done, config.eos_id, token)
      done = done | (token == config.eos_id)
    out = jax.lax.dynamic_update_slice(out, token[:, None].astype(jnp.int32), (0, p + i))
    cache, logits = forward(cache, token[:, None].astype(jnp.int32), p + i)
    return cache, logits, out, done

  _, _, out, _ = jax.lax.fori_loop(0, config.max_new_tokens, body, (cache, logits, out, done))
  return out


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
  ids = tokenizer.encode(prompt) if prompt else []
  if not ids:
    start = tokenizer.eos_id if tokenizer.eos_id is not None else 0
    ids = [start]
  model = trainable.model
  limit = getattr(model.config, "max_len", None)
  position = getattr(model.config, "position", "")
  # Learned and sinusoidal positions are tables of max_len rows; JAX would clamp a position
  # past the end silently. RoPE has no such limit.
  if position in ("learned", "sinusoidal") and limit and len(ids) + config.max_new_tokens > limit:
    raise DataError(
      f"prompt ({len(ids)} tokens) + {config.max_new_tokens} new tokens exceeds the model's "
      f"max_len={limit} {position} positions; ask for fewer tokens"
    )
  if tokenizer.eos_id is not None and config.eos_id is None:
    config = dataclasses.replace(config, eos_id=tokenizer.eos_id)
  prompt_arr = jnp.asarray([ids] * num_samples, jnp.int32)
  with trainable.context():
    out = generate(model, params, prompt_arr, jax.random.PRNGKey(seed), config)
  out = jax.device_get(out)
  texts = [tokenizer.decode(row[len(ids) if prompt else 1 :]) for row in out]
  return texts[0] if num_samples == 1 else texts


def complete(
  trainable, params, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 32
) -> list[str]:
  """Greedy continuations (decoded text, up to EOS) of token-id prompts, in order. Prompts
  of one length decode together (the KV cache here takes one prompt length per batch)."""
  config = SamplingConfig(max_new_tokens, temperature=0.0, eos_id=tokenizer.eos_id)
  out: list[str] = [""] * len(prompts)
  by_length: dict[int, list[int]] = {}
  for i, p in enumerate(prompts):
    by_length.setdefault(len(p), []).append(i)
  for length, rows in sorted(by_length.items()):
    for first in range(0, len(rows), batch_size):
      chunk = rows[first : first + batch_size]
      with trainable.context():
        tokens = generate(
          trainable.model, params, jnp.asarray([prompts[i] for i in chunk], jnp.int32),
          jax.random.PRNGKey(0), config,
        )  # fmt: skip
      for i, row in zip(chunk, jax.device_get(tokens), strict=True):
        new = [int(t) for t in row[length:]]
        if tokenizer.eos_id in new:
          new = new[: new.index(tokenizer.eos_id)]
        out[i] = tokenizer.decode(new)
  return out
