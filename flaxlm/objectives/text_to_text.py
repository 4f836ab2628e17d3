"""Encoder–decoder objectives: T5 span corruption (Raffel et al. 2020, section 3.1.4) and
supervised pairs (translation, prefix-LM), both as packed (source, target) rows."""

from __future__ import annotations

import dataclasses

import numpy as np

from flaxlm.errors import ConfigError
from flaxlm.nn import losses
from flaxlm.objectives.base import LossConfig, Objective, check_corpus, stream_windows


@dataclasses.dataclass(frozen=True)
class SpanCorruptionConfig:
  """T5 span corruption: `noise_density` of each window's tokens, in spans of mean length
  `mean_span_length`, move to the target, each span replaced by one sentinel."""

  noise_density: float = 0.15
  mean_span_length: float = 3.0


def pack_pairs(
  pairs: list[tuple[np.ndarray, np.ndarray]],
  source_len: int,
  target_len: int,
  start_id: int,
  eos_id: int,
  pad_id: int,
) -> dict[str, np.ndarray]:
  """Source/target pairs -> one encoder–decoder row, packed.

  Each side gets EOS appended (a side longer than the row is cut, keeping the EOS); pair i
  takes segment id i + 1 and positions from 0 on both sides; a pair that no longer fits is
  dropped. The decoder reads the target shifted right behind `start_id`.
  Returns inputs / input_segments / input_positions (S,), decoder_inputs / decoder_segments
  / decoder_positions / targets / weights (T,).
  """
  src_rows, tgt_rows = [], []
  used_s = used_t = 0
  for src, tgt in pairs:
    src = np.append(np.asarray(src, np.int32)[: source_len - 1], eos_id)
    tgt = np.append(np.asarray(tgt, np.int32)[: target_len - 1], eos_id)
    if used_s + len(src) > source_len or used_t + len(tgt) > target_len:
      break
    src_rows.append(src)
    tgt_rows.append(tgt)
    used_s, used_t = used_s + len(src), used_t + len(tgt)

  def lay_out(rows, length):
    tokens = np.full(length, pad_id, np.int32)
    shifted = np.full(length, pad_id, np.int32)
    segments = np.zeros(length, np.int32)
    positions = np.zeros(length, np.int32)
    at = 0
    for i, row in enumerate(rows):
      n = len(row)
      tokens[at : at + n] = row
      shifted[at : at + n] = np.concatenate([[start_id], row[:-1]])
      segments[at : at + n] = i + 1
      positions[at : at + n] = np.arange(n)
      at += n
    return tokens, shifted, segments, positions

  inputs, _, input_segments, input_positions = lay_out(src_rows, source_len)
  targets, decoder_inputs, decoder_segments, decoder_positions = lay_out(tgt_rows, target_len)
  return {
    "inputs": inputs,
    "input_segments": input_segments,
    "input_positions": input_positions,
    "decoder_inputs": decoder_inputs,
    "decoder_segments": decoder_segments,
    "decoder_positions": decoder_positions,
    "targets": targets,
    "weights": (decoder_segments > 0).astype(np.float32),
  }


def seq2seq_logits(model, params, batch, rng=None, deterministic: bool = True):
  """Teacher-forced logits (B, T, V) of a batch with the keys `pack_pairs` makes."""
  return model.apply(
    {"params": params},
    batch["inputs"],
    batch["decoder_inputs"],
    input_segments=batch["input_segments"],
    decoder_segments=batch["decoder_segments"],
    input_positions=batch["input_positions"],
    decoder_positions=batch["decoder_positions"],
    deterministic=deterministic,
    rngs=None if deterministic else {"dropout": rng},
  )


def seq2seq(model, params, batch, rng, deterministic: bool, loss: LossConfig):
  """Teacher-forced encoder–decoder loss on the targets (B, T)."""
  logits = seq2seq_logits(model, params, batch, rng, deterministic)
  return losses.cross_entropy(
    logits, batch["targets"], batch["weights"], loss.label_smoothing, loss.z_loss
  )


def seq2seq_ids(tokenizer, objective: str) -> tuple[int, int, int]:
  """(start, eos, pad) ids; the decoder starts from BOS when there is one, else from pad (T5)."""
  ids = getattr(tokenizer, "special_ids", {})
  if "eos" not in ids or "pad" not in ids:
    raise ConfigError(
      f"the {objective!r} objective needs EOS and padding ids in the vocabulary; use "
      "--config.tokenizer.kind=sentencepiece (special_tokens '' or 't5') or kind=byte"
    )
  return ids.get("bos", ids["pad"]), ids["eos"], ids["pad"]


def noise_span_counts(length: int, c: SpanCorruptionConfig) -> tuple[int, int]:
  """(noise tokens, noise spans) for a window of `length` tokens (T5's rounding)."""
  num_noise = min(max(round(length * c.noise_density), 1), length - 1)
  return num_noise, max(round(num_noise / c.mean_span_length), 1)


def span_corruption_lengths(length: int, c: SpanCorruptionConfig) -> tuple[int, int]:
  """(encoder, decoder) tokens a window of `length` tokens becomes, EOS included."""
  num_noise, num_spans = noise_span_counts(length, c)
  return length - num_noise + num_spans + 1, num_noise + num_spans + 1


def span_corruption_window(seq_len: int, c: SpanCorruptionConfig) -> int:
  """The longest window whose corrupted input fits in `seq_len` tokens."""
  length = seq_len
  while span_corruption_lengths(length + 1, c)[0] <= seq_len:
    length += 1
  while length > 2 and span_corruption_lengths(length, c)[0] > seq_len:
    length -= 1
  return length


def _random_partition(n: int, parts: int, rng: np.random.Generator) -> np.ndarray:
  """`parts` positive integers summing to n, uniformly over compositions."""
  cuts = np.sort(rng.choice(n - 1, parts - 1, replace=False)) + 1 if parts > 1 else []
  return np.diff(np.concatenate([[0], cuts, [n]])).astype(np.int64)


def corrupt_spans(
  window: np.ndarray, rng: np.random.Generator, c: SpanCorruptionConfig, sentinels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """T5 span corruption of one window (L,) -> (inputs, targets), neither with EOS yet.

  Spans alternate kept / noise, starting with kept: inputs are the kept tokens with noise
  span i replaced by sentinel i; targets are sentinel i followed by span i, for each i."""
  num_noise, num_spans = noise_span_counts(len(window), c)
  if num_spans > len(sentinels):
    raise ConfigError(
      f"a window of {len(window)} tokens makes {num_spans} noise spans but the vocabulary has "
      f"{len(sentinels)} sentinels; use a shorter --config.seq_len"
    )
  noise = _random_partition(num_noise, num_spans, rng)
  kept = _random_partition(len(window) - num_noise, num_spans, rng)
  inputs, targets, at = [], [], 0
  for i in range(num_spans):
    inputs += [window[at : at + kept[i]], sentinels[i : i + 1]]
    at += kept[i]
    targets += [sentinels[i : i + 1], window[at : at + noise[i]]]
    at += noise[i]
  return np.concatenate(inputs).astype(np.int32), np.concatenate(targets).astype(np.int32)


def span_corruption_objective(
  tokenizer, seq_len: int = 128, spans: SpanCorruptionConfig | None = None, **_
) -> Objective:
  """T5 pretraining: windows of the stream, span-corrupted, as one packed pair each."""
  spans = spans or SpanCorruptionConfig()
  start, eos, pad = seq2seq_ids(tokenizer, "span_corruption")
  ids = tokenizer.special_ids
  sentinels = np.array([ids[f"sentinel_{i}"] for i in range(100) if f"sentinel_{i}" in ids])
  if not len(sentinels):
    raise ConfigError(
      "the span_corruption objective needs sentinel tokens <extra_id_0..>; set "
      "--config.tokenizer.kind=sentencepiece --config.tokenizer.special_tokens=t5"
    )
  window = span_corruption_window(seq_len, spans)
  target_len = span_corruption_lengths(window, spans)[1]

  def example(tokens, rng):
    pair = corrupt_spans(np.asarray(tokens), rng, spans, sentinels)
    return pack_pairs([pair], seq_len, target_len, start, eos, pad)

  return Objective(
    "span_corruption", seq2seq, stream_windows(lambda t: window), example, target_len=target_len
  )


def translation_objective(
  tokenizer, seq_len: int = 128, target_len: int = 0, pairs_per_example: int = 1, **_
) -> Objective:
  """Supervised seq2seq on parallel text (translation, prefix-LM pairs): the source is
  encoded, the target predicted; `pairs_per_example` pairs are packed per row."""
  start, eos, pad = seq2seq_ids(tokenizer, "seq2seq")
  target_len = target_len or seq_len
  group = max(pairs_per_example, 1)

  def example(pairs, rng):  # a list of `group` pairs, or one pair
    pairs = pairs if isinstance(pairs, list) else [pairs]
    return pack_pairs(pairs, seq_len, target_len, start, eos, pad)

  def records(data, config, stride):
    del stride
    check_corpus(data, config, "pairs")
    return data

  return Objective(
    "seq2seq",
    seq2seq,
    records,
    example,
    target_len=target_len,
    group=group,
    trains_on="pairs",
  )
