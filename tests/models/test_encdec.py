"""Encoder–decoder family (T5, the original Transformer): span corruption, packing of pairs,
attention masks, cached decoding, beam search against greedy, parallel data, and sharded
steps equal to one device."""

import dataclasses
import functools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxlm import objectives
from flaxlm.data import corpus, pipeline, sources, spec
from flaxlm.decode import seq2seq as seq2seq_decoding
from flaxlm.models import encdec
from flaxlm.objectives import SpanCorruptionConfig, text_to_text

V = 128  # divisible by the tensor axis: the vocabulary is split over it
PAD, EOS, BOS = 0, 1, 2
SENTINELS = np.arange(3, 3 + 20)
TOKENIZER = types.SimpleNamespace(
  vocab_size=V,
  special_ids={
    "pad": PAD,
    "eos": EOS,
    **{f"sentinel_{i}": int(s) for i, s in enumerate(SENTINELS)},
  },
)


def small(name: str, **kw) -> encdec.EncDecConfig:
  fields = dict(vocab_size=V, num_layers=2, embed_dim=32, num_heads=4, mlp_dim=64, max_len=64)
  return dataclasses.replace(encdec.PRESETS[name], **{**fields, "dropout_rate": 0.0, **kw})


VARIANTS = {
  "t5": small("t5_tiny"),
  "t5_v1_1": small("t5_v1_1_small", head_dim=0),
  "vaswani": small("transformer_small"),
  "vaswani_scan": small("transformer_small", scan_layers=True),
}


@functools.cache
def init(name: str):
  model = encdec.EncoderDecoder(VARIANTS[name])
  params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32))["params"]
  return model, nn.meta.unbox(params)


def random_tokens(seed, shape, low=30):
  return jnp.asarray(np.random.default_rng(seed).integers(low, V, shape), jnp.int32)


# ----------------------------------------------------------------------------- span corruption


def reconstruct(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Inverse of span corruption: each sentinel in the inputs is replaced by its target span."""
  spans, current = {}, None
  for t in targets:
    if t in SENTINELS:
      current = int(t)
      spans[current] = []
    else:
      spans[current].append(int(t))
  out = []
  for t in inputs:
    out += spans[int(t)] if t in SENTINELS else [int(t)]
  return np.array(out)


@pytest.mark.parametrize("length", [8, 37, 146, 300])
def test_span_corruption_inputs_and_targets_reconstruct_the_text(length):
  c = SpanCorruptionConfig()
  rng = np.random.default_rng(length)
  for _ in range(50):
    window = rng.integers(30, V, length).astype(np.int32)
    inputs, targets = text_to_text.corrupt_spans(window, rng, c, SENTINELS)
    np.testing.assert_array_equal(reconstruct(inputs, targets), window)
    num_noise, num_spans = text_to_text.noise_span_counts(length, c)
    assert len(targets) == num_noise + num_spans  # EOS comes later, in pack_pairs
    assert len(inputs) == length - num_noise + num_spans
    assert list(inputs[np.isin(inputs, SENTINELS)]) == list(SENTINELS[:num_spans])
    assert inputs[0] not in SENTINELS  # spans alternate starting with kept text, as in T5


def test_span_corruption_rates():
  """15% of tokens become noise, in spans of mean length 3, at random places."""
  c = SpanCorruptionConfig()
  rng = np.random.default_rng(0)
  window = np.arange(30, 30 + 60).astype(np.int32)  # distinct tokens: noise is recoverable
  noise_at = np.zeros(60)
  for _ in range(400):
    _, targets = text_to_text.corrupt_spans(window, rng, c, SENTINELS)
    noise = targets[~np.isin(targets, SENTINELS)]
    assert len(noise) == 9  # round(60 * 0.15)
    assert (targets[np.isin(targets, SENTINELS)] == SENTINELS[:3]).all()  # 9 / 3 spans
    noise_at[noise - 30] += 1
  # As in T5's random_spans_noise_mask, spans alternate kept / noise starting with kept, so
  # the first token is never noise and the last always is; the rest is spread out.
  assert noise_at[0] == 0 and noise_at[-1] == 400
  assert noise_at[1:-1].min() > 0 and noise_at[1:-6].max() < 2.5 * noise_at[1:-1].mean()


def test_span_corruption_example_fits_seq_len():
  obj = objectives.make_objective("span_corruption", TOKENIZER, seq_len=64)
  window = len(obj.records(np.zeros(1000, np.int32), spec.DataConfig(seq_len=64), 0)[0])
  ex = obj.example(np.arange(window) % 60 + 30, np.random.default_rng(0))
  assert ex["inputs"].shape == (64,) and ex["targets"].shape == (obj.target_len,)
  n_in = int(ex["input_segments"].sum())
  assert n_in == text_to_text.span_corruption_lengths(window, SpanCorruptionConfig())[0] <= 64
  assert ex["weights"].sum() == obj.target_len  # targets have an exact length
  assert ex["inputs"][n_in - 1] == EOS and ex["targets"][-1] == EOS
  assert ex["decoder_inputs"][0] == PAD  # T5 starts decoding from the pad id
  np.testing.assert_array_equal(ex["decoder_inputs"][1:], ex["targets"][:-1])
  restored = reconstruct(ex["inputs"][: n_in - 1], ex["targets"][:-1])
  np.testing.assert_array_equal(restored, np.arange(window) % 60 + 30)


def test_span_corruption_needs_sentinels():
  plain = types.SimpleNamespace(vocab_size=V, special_ids={"pad": 0, "eos": 1})
  with pytest.raises(ValueError, match="special_tokens=t5"):
    objectives.make_objective("span_corruption", plain, seq_len=64)


# ----------------------------------------------------------------------------- packing pairs


def test_pack_pairs_segments_positions_and_overflow():
  pairs = [([5, 6, 7], [8, 9]), ([10], [11, 12, 13]), ([14, 15, 16, 17, 18], [19])]
  ex = text_to_text.pack_pairs(pairs, 10, 8, BOS, EOS, PAD)
  # The third pair does not fit in the 10 source slots left (4 + 2 used, 6 needed): dropped.
  np.testing.assert_array_equal(ex["inputs"], [5, 6, 7, EOS, 10, EOS, 0, 0, 0, 0])
  np.testing.assert_array_equal(ex["input_segments"], [1, 1, 1, 1, 2, 2, 0, 0, 0, 0])
  np.testing.assert_array_equal(ex["input_positions"], [0, 1, 2, 3, 0, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(ex["targets"], [8, 9, EOS, 11, 12, 13, EOS, 0])
  np.testing.assert_array_equal(ex["decoder_inputs"], [BOS, 8, 9, BOS, 11, 12, 13, 0])
  np.testing.assert_array_equal(ex["decoder_positions"], [0, 1, 2, 0, 1, 2, 3, 0])
  np.testing.assert_array_equal(ex["weights"], [1, 1, 1, 1, 1, 1, 1, 0])
  long = text_to_text.pack_pairs([(list(range(30, 50)), [8])], 6, 4, BOS, EOS, PAD)
  np.testing.assert_array_equal(long["inputs"], [30, 31, 32, 33, 34, EOS])  # cut, EOS kept


@pytest.mark.parametrize("name", [pytest.param("t5", marks=pytest.mark.slow), "vaswani"])
def test_packed_rows_equal_separate_examples(name):
  """Segment ids keep packed pairs apart in encoder, decoder and cross-attention, and
  positions restart per pair: a packed row gives each pair's logits exactly."""
  model, params = init(name)
  pairs = [(np.arange(30, 37), np.arange(40, 44)), (np.arange(50, 54), np.arange(60, 66))]
  packed = text_to_text.pack_pairs(pairs, 16, 12, BOS, EOS, PAD)
  batch = {k: jnp.asarray(v[None]) for k, v in packed.items()}
  logits = text_to_text.seq2seq_logits(model, params, batch)[0]
  at = 0
  for pair in pairs:
    alone = text_to_text.pack_pairs([pair], len(pair[0]) + 1, len(pair[1]) + 1, BOS, EOS, PAD)
    want = model.apply({"params": params}, alone["inputs"][None], alone["decoder_inputs"][None])[0]
    n = len(pair[1]) + 1
    np.testing.assert_allclose(logits[at : at + n], want, atol=2e-5, rtol=1e-4)
    at += n


# ----------------------------------------------------------------------------- masks


def test_encoder_is_bidirectional_and_decoder_causal():
  model, params = init("t5")
  src, tgt = random_tokens(0, (1, 10)), random_tokens(1, (1, 8))
  encode = lambda s: model.apply({"params": params}, s, method="encode")
  changed = encode(src.at[0, 9].set(31)) - encode(src)
  assert jnp.abs(changed[0, 0]).max() > 1e-4  # a later source token reaches the first
  logits = model.apply({"params": params}, src, tgt)
  later = model.apply({"params": params}, src, tgt.at[0, 5].set(31))
  np.testing.assert_allclose(later[0, :5], logits[0, :5], atol=1e-6)  # earlier targets unchanged
  assert jnp.abs(later[0, 5:] - logits[0, 5:]).max() > 1e-4


@pytest.mark.parametrize("name", [pytest.param("t5", marks=pytest.mark.slow), "vaswani"])
def test_cross_attention_ignores_source_padding(name):
  model, params = init(name)
  src, tgt = random_tokens(2, (2, 10)), random_tokens(3, (2, 6))
  segments = jnp.ones((2, 10), jnp.int32).at[:, 6:].set(0)
  run = lambda s: model.apply({"params": params}, s, tgt, input_segments=segments)
  other = src.at[:, 6:].set(random_tokens(4, (2, 4)))
  np.testing.assert_allclose(run(other), run(src), atol=1e-6)
  # ... and the real source tokens do matter
  assert jnp.abs(run(src.at[:, 2].set(33)) - run(src)).max() > 1e-4


# ----------------------------------------------------------------------------- decoding


SLOW_VARIANTS = ("t5", "vaswani_scan")  # CI runs them; the default suite stays under 15 minutes


@pytest.mark.parametrize(
  "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_VARIANTS else n for n in VARIANTS]
)
def test_cached_decoding_equals_full_forward(name):
  """Token-by-token decoding with the self-attention KV cache and the cached cross-attention
  keys/values gives the teacher-forced logits."""
  model, params = init(name)
  src, tgt = random_tokens(5, (2, 9)), random_tokens(6, (2, 7))
  segments = jnp.ones((2, 9), jnp.int32).at[1, 6:].set(0)
  full = model.apply({"params": params}, src, tgt, input_segments=segments)
  encoded = model.apply({"params": params}, src, segments, method="encode")
  cache = seq2seq_decoding.init_cache(model, params, encoded, segments, decode_len=7)
  steps = []
  for i in range(7):
    logits, cache = seq2seq_decoding._decoder_call(
      model, params, cache, encoded, segments, tgt[:, i : i + 1], i, 7
    )
    steps.append(logits)
  np.testing.assert_allclose(jnp.stack(steps, 1), full, atol=2e-5, rtol=1e-4)


def decode(name, config, src, segments):
  model, params = init(name)
  return jax.device_get(
    seq2seq_decoding.decode(model, params, src, segments, jax.random.PRNGKey(0), config, BOS, EOS)
  )


@pytest.mark.parametrize(
  "name",
  ["t5", pytest.param("vaswani_scan", marks=pytest.mark.slow)],  # as SLOW_VARIANTS
)
def test_beam_one_equals_greedy(name):
  src = random_tokens(7, (3, 9))
  segments = jnp.ones((3, 9), jnp.int32).at[2, 5:].set(0)
  greedy = decode(name, seq2seq_decoding.DecodeConfig(max_len=12), src, segments)
  beam1 = decode(
    name, seq2seq_decoding.DecodeConfig(max_len=12, beam_size=1, alpha=0.0), src, segments
  )
  np.testing.assert_array_equal(beam1, greedy)


@pytest.mark.slow  # CI runs it; the default suite stays under 15 minutes
def test_beam_search_scores_at_least_greedy():
  """A wider beam finds hypotheses at least as likely as greedy's (alpha 0: raw log-prob)."""
  model, params = init("t5")
  src = random_tokens(8, (4, 9))
  segments = jnp.ones((4, 9), jnp.int32)

  def logprob(tokens):
    tokens = jnp.asarray(tokens)
    dec_in = jnp.concatenate([jnp.full((4, 1), BOS), tokens[:, :-1]], axis=1)
    logp = jax.nn.log_softmax(model.apply({"params": params}, src, dec_in, input_segments=segments))
    per_token = jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
    ended = jnp.cumsum(tokens == EOS, axis=1) - (tokens == EOS) > 0  # after the first EOS
    return jnp.where(ended, 0.0, per_token).sum(1)

  greedy = decode("t5", seq2seq_decoding.DecodeConfig(max_len=10), src, segments)
  beam = decode(
    "t5", seq2seq_decoding.DecodeConfig(max_len=10, beam_size=4, alpha=0.0), src, segments
  )
  assert (logprob(beam) >= logprob(greedy) - 1e-4).all()


# ----------------------------------------------------------------------------- parallel data


def write_pairs(tmp_path, n=40, target_lines=None):
  words = ["red", "green", "blue", "cat", "dog", "runs", "sleeps", "fast", "slow", "home"]
  rng = np.random.default_rng(0)
  src = [" ".join(rng.choice(words, rng.integers(2, 6))) for _ in range(n)]
  tgt = [" ".join(reversed(s.split())) for s in src]  # a toy "translation": reversed words
  (tmp_path / "src.txt").write_text("\n".join(src) + "\n")
  (tmp_path / "tgt.txt").write_text("\n".join(tgt[:target_lines]) + "\n")
  return src, tgt


def test_pairs_source_tokenizer_and_packed_batches(tmp_path, tfds_dir):
  src, tgt = write_pairs(tmp_path)
  data = spec.DataConfig(
    dataset=f"pairs:{tmp_path}/src.txt,{tmp_path}/tgt.txt",
    data_dir=tfds_dir,
    seq_len=24,
    val_fraction=0.25,
  )
  from flaxlm.data.tokenizers import TokenizerConfig

  pairs = corpus.load_corpus(data, TokenizerConfig(kind="byte"), str(tmp_path / "cache"))
  assert isinstance(pairs.train, corpus.Pairs) and len(pairs.train) == 30
  assert len(pairs.validation) == 10
  s, t = pairs.train[3]
  assert pairs.tokenizer.decode(s) == src[3] and pairs.tokenizer.decode(t) == tgt[3]
  again = corpus.load_corpus(data, TokenizerConfig(kind="byte"), str(tmp_path / "cache"))
  np.testing.assert_array_equal(again.train.target, pairs.train.target)  # from the cache

  tok = pairs.tokenizer
  obj = objectives.make_objective("seq2seq", tok, seq_len=24, pairs_per_example=2)
  ds = pipeline.train_dataset(pairs.train, data, global_batch=4, objective=obj)
  batch = ds[0]
  assert batch["inputs"].shape == (4, 24) and batch["targets"].shape == (4, 24)
  assert batch["input_segments"].max() <= 2
  # every packed pair is a real (source, target) pair of the training split
  known = {tuple(pairs.train[i][0]): tuple(pairs.train[i][1]) for i in range(30)}
  for row in range(4):
    for seg in (1, 2):
      s = batch["inputs"][row][batch["input_segments"][row] == seg][:-1]
      t = batch["targets"][row][batch["decoder_segments"][row] == seg][:-1]
      if len(s):
        assert known[tuple(s)] == tuple(t)
  evals = pipeline.eval_batches(pairs.validation, data, 2, 10, obj)
  assert len(evals) == 2  # 10 pairs, 2 per row, 2 rows per batch -> 2 full batches (+ a part)


def test_pairs_errors_name_the_problem(tmp_path, tfds_dir):
  write_pairs(tmp_path, target_lines=30)
  with pytest.raises(ValueError, match="has 40 lines but .* has 30"):
    sources.open_source(f"pairs:{tmp_path}/src.txt,{tmp_path}/tgt.txt", tfds_dir)
  with pytest.raises(ValueError, match="exactly two files"):
    sources.open_source(f"pairs:{tmp_path}/src.txt", tfds_dir)
  (tmp_path / "plain.txt").write_text("just text\n" * 50)
  data = spec.DataConfig(dataset=f"text:{tmp_path}/plain.txt", data_dir=tfds_dir, seq_len=8)
  from flaxlm.data.tokenizers import ByteTokenizer

  obj = objectives.make_objective("seq2seq", ByteTokenizer(), seq_len=8)
  tokens = np.arange(100, dtype=np.int32)
  with pytest.raises(ValueError, match="trains on parallel text"):
    pipeline.train_dataset(tokens, data, 4, obj)


# ----------------------------------------------------------------------------- sharding


def seq2seq_batch(b=8):
  rng = np.random.default_rng(0)
  rows = []
  for _ in range(b):
    pairs = [
      (rng.integers(30, V, rng.integers(2, 7)), rng.integers(30, V, rng.integers(2, 7)))
      for _ in range(2)
    ]
    rows.append(text_to_text.pack_pairs(pairs, 16, 16, PAD, EOS, PAD))
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


@pytest.mark.parametrize("axes", [pytest.param((2, 2, 2), marks=pytest.mark.slow), (1, 4, 2)])
def test_sharded_t5_steps_equal_single_device(axes, sharded_equals_single_device):
  """Three seq2seq steps of T5 (dropout on, relative bias, scanned layers, packed pairs) on a
  mesh equal the 1-device steps."""
  config = dataclasses.replace(VARIANTS["t5"], scan_layers=True, dropout_rate=0.1)
  model = encdec.EncoderDecoder(config)
  sharded_equals_single_device(model, objectives.seq2seq, seq2seq_batch(), axes)
