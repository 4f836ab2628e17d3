"""Decoding for encoder–decoder models: greedy, sampling and beam search, jitted, fixed shapes.

The encoder runs once. The decoder runs one token at a time with a KV cache for its
self-attention and the source's projected keys/values cached per cross-attention layer
(`layers.Attention` fills them on the first decode call, made by `init_cache`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from flaxlm.decode import beam_search as beam
from flaxlm.decode.sampling import SamplingConfig, choose, without_padded_vocab
from flaxlm.errors import DataError
from flaxlm.objectives.text_to_text import seq2seq_ids


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  max_len: int = 64  # target tokens generated at most (EOS included)
  beam_size: int = 0  # 0: greedy or sampling (by `sampling`); >= 1: beam search
  alpha: float = 0.6  # beam length penalty ((5 + len) / 6) ** alpha; 0 = raw log-probability
  sampling: SamplingConfig = SamplingConfig(temperature=0.0)  # greedy unless temperature > 0


def _decoder_call(model, params, cache, encoded, input_segments, tokens, position, decode_len):
  positions = jnp.full(tokens.shape, position, jnp.int32)
  logits, mutated = model.clone(decode_mode=True).apply(
    {"params": params, "cache": cache},
    encoded,
    tokens,
    input_segments,
    decoder_positions=positions,
    decode_len=decode_len,
    method="decode",
    mutable=["cache"],
  )
  return logits[:, -1], mutated["cache"]


def init_cache(model, params, encoded, input_segments, decode_len: int):
  """An empty self-attention cache of `decode_len` slots and the filled cross-attention one."""
  dummy = jnp.zeros((encoded.shape[0], decode_len), jnp.int32)
  _, mutated = model.clone(decode_mode=True).apply(
    {"params": params},
    encoded,
    dummy,
    input_segments,
    decode_len=decode_len,
    method="decode",
    mutable=["cache"],
  )
  return mutated["cache"]


@functools.partial(jax.jit, static_argnames=("model", "config", "start_id", "eos_id"))
def decode(model, params, inputs, input_segments, rng, config: DecodeConfig, start_id, eos_id):
  """inputs, input_segments (B, S) -> (B, max_len) target ids (EOS-padded after the end)."""
  encoded = model.apply({"params": params}, inputs, input_segments, method="encode")
  b = inputs.shape[0]
  length = config.max_len
  if config.beam_size:
    k = config.beam_size
    encoded = jnp.repeat(encoded, k, axis=0)  # row b * k + j: beam j of example b
    input_segments = jnp.repeat(input_segments, k, axis=0)
    cache = init_cache(model, params, encoded, input_segments, length)

    def step(cache, tokens, position):
      logits, cache = _decoder_call(
        model, params, cache, encoded, input_segments, tokens, position, length
      )
      return without_padded_vocab(logits, config.sampling.vocab_size), cache  # never a beam

    batch_axis = 1 if model.config.scan_layers else 0  # nn.scan stacks layers first
    tokens, _ = beam.beam_search(
      step,
      cache,
      batch_size=b,
      beam_size=k,
      max_len=length,
      start_id=start_id,
      eos_id=eos_id,
      alpha=config.alpha,
      gather_cache=lambda c, rows: beam.gather_rows(c, rows, batch_axis),
    )
    return tokens

  cache = init_cache(model, params, encoded, input_segments, length)

  def body(i, carry):
    cache, last, out, done = carry
    logits, cache = _decoder_call(
      model, params, cache, encoded, input_segments, last[:, None], i, length
    )
    token = choose(logits, jax.random.fold_in(rng, i), config.sampling).astype(jnp.int32)
    token = jnp.where(done, eos_id, token)
    done = done | (token == eos_id)
    return cache, token, out.at[:, i].set(token), done

  start = jnp.full((b,), start_id, jnp.int32)
  out = jnp.full((b, length), eos_id, jnp.int32)
  carry = (cache, start, out, jnp.zeros((b,), bool))
  return jax.lax.fori_loop(0, length, body, carry)[2]


def strip_after_eos(row, eos_id: int) -> list[int]:
  row = [int(t) for t in row]
  return row[: row.index(eos_id)] if eos_id in row else row


def translate(
  trainable,
  params,
  tokenizer,
  texts: list[str],
  config: DecodeConfig,
  batch_size: int = 32,
  seed: int = 0,
) -> list[str]:
  """Source texts -> decoded target texts, in order, in fixed-shape batches (one compile)."""
  start_id, eos_id, pad_id = seq2seq_ids(tokenizer, "seq2seq")
  if not config.sampling.vocab_size:
    sampling = dataclasses.replace(config.sampling, vocab_size=tokenizer.vocab_size)
    config = dataclasses.replace(config, sampling=sampling)
  model = trainable.model
  c = model.config
  if c.position in ("learned", "sinusoidal") and config.max_len > c.max_len:
    raise DataError(
      f"max_len={config.max_len} target tokens exceed the model's max_len={c.max_len} positions"
    )
  encoded = [tokenizer.encode(t)[: c.max_len - 1] + [eos_id] for t in texts]
  width = 16 * math.ceil(max([len(e) for e in encoded] + [1]) / 16)
  outputs = []
  for first in range(0, len(encoded), batch_size):
    chunk = encoded[first : first + batch_size]
    inputs = np.full((batch_size, width), pad_id, np.int32)
    segments = np.zeros((batch_size, width), np.int32)
    segments[:, 0] = 1  # the rows that pad the last batch attend to one token
    for i, ids in enumerate(chunk):
      inputs[i, : len(ids)] = ids
      segments[i, : len(ids)] = 1
    with trainable.context():
      out = decode(
        model,
        params,
        jnp.asarray(inputs),
        jnp.asarray(segments),
        jax.random.PRNGKey(seed + first),
        config,
        start_id,
        eos_id,
      )
    for row in jax.device_get(out)[: len(chunk)]:
      outputs.append(tokenizer.decode(strip_after_eos(row, eos_id)))
  return outputs


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
  """sacreBLEU on detokenized text (its default 13a tokenization), 0..100."""
  import sacrebleu

  return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def example_report(trainable, params, tokenizer, example: dict, max_len: int = 64) -> str:
  """Input, target and greedy prediction of the first packed pair of one example (numpy,
  as the objective makes it), decoded to text (sentinels stay visible)."""
  start_id, eos_id, _ = seq2seq_ids(tokenizer, "seq2seq")
  first_src = example["input_segments"] == 1
  source = example["inputs"][first_src]
  target = example["targets"][example["decoder_segments"] == 1]
  max_len = min(max_len, trainable.model.config.max_len)
  with trainable.context():
    out = decode(
      trainable.model,
      params,
      jnp.asarray(source[None]),
      jnp.ones((1, len(source)), jnp.int32),
      jax.random.PRNGKey(0),
      DecodeConfig(max_len=max_len),
      start_id,
      eos_id,
    )
  prediction = strip_after_eos(jax.device_get(out)[0], eos_id)
  show = lambda ids: tokenizer.decode(strip_after_eos(ids, eos_id))
  return f"input:      {show(source)}\ntarget:     {show(target)}\nprediction: {tokenizer.decode(prediction)}"
