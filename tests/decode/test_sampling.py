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

from flaxlm.data import tokenizers
from flaxlm.decode import sampling
from flaxlm.decode.sampling import SamplingConfig
from flaxlm.models import gpt
from flaxlm.nn import sharding
from flaxlm.objectives import causal_lm
from flaxlm.train.steps import StepConfig, Trainable, token_init

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
  out = generate(LEARNED, prompt, dataclasses.replace(GREEDY, vocab_size=CHARS.vocab_size))
  assert texts[0] == CHARS.decode(out[0, P:])


# ----------------------------------------------------------------------------- serving shapes


LENGTHS = [3, 7, 1, 5]  # four prompts of different lengths, one batch


def ragged_prompts(pad_side: str):
  """(B, 7) prompts padded on `pad_side` with junk ids (they must not matter), and each alone."""
  rng = np.random.default_rng(3)
  alone = [rng.integers(0, VOCAB, n).astype(np.int32) for n in LENGTHS]
  batch = rng.integers(0, VOCAB, (len(LENGTHS), max(LENGTHS))).astype(np.int32)
  for row, p in enumerate(alone):
    if pad_side == "right":
      batch[row, : len(p)] = p
    else:
      batch[row, batch.shape[1] - len(p) :] = p
  return jnp.asarray(batch), jnp.asarray(LENGTHS, jnp.int32), alone


@pytest.mark.parametrize(
  "config,pad_side",
  [(LEARNED, "right"), (LEARNED, "left"), pytest.param(LLAMA, "left", marks=pytest.mark.slow)],
  ids=["learned-right", "learned-left", "llama_scan-left"],
)
def test_batched_ragged_prompts_equal_one_at_a_time(config, pad_side):
  """Greedy decoding of four prompts of different lengths in one padded batch gives each
  prompt's own greedy continuation (positions, padding and the KV cache per row)."""
  batch, lengths, alone = ragged_prompts(pad_side)
  new = 6
  cfg = SamplingConfig(max_new_tokens=new, temperature=0.0)
  model, params = gpt.GPT(config), random_params(config)
  out = np.asarray(
    sampling.generate(model, params, batch, jax.random.PRNGKey(0), cfg, lengths, pad_side)
  )
  assert out.shape == (len(LENGTHS), max(LENGTHS) + new)
  for row, p in enumerate(alone):
    single = generate(config, jnp.asarray(p[None]), cfg)[0]
    np.testing.assert_array_equal(out[row, : len(p) + new], single, err_msg=f"row {row}")
    assert (out[row, len(p) + new :] == 0).all()  # then the fill (no eos_id: 0)


def test_loop_stops_when_every_row_has_ended(monkeypatch):
  """Once every row has emitted EOS (here all at step 2 at the latest), the while loop stops:
  3 steps or fewer of 12, and the rest of every row is EOS."""
  prompt = prompts()
  free = generate(LEARNED, prompt, GREEDY)
  eos = int(free[0, P + 2])
  ends = int(np.flatnonzero(free[0, P:] == eos)[0])  # step 2, or earlier if it came before
  steps = []
  real_choose = sampling.choose

  def counting_choose(logits, rng, c):
    jax.debug.callback(lambda x: steps.append(x), logits[0, 0])  # once per iteration
    return real_choose(logits, rng, c)

  monkeypatch.setattr(sampling, "choose", counting_choose)
  # Every row gets the same prompt as row 0, so all of them end at step 2.
  same = jnp.broadcast_to(prompt[:1], prompt.shape)
  config = dataclasses.replace(GREEDY, eos_id=eos, top_k=7)  # a config no other test traces
  out = generate(LEARNED, same, config)
  assert len(steps) == ends + 1 < NEW
  kept = P + ends + 1
  np.testing.assert_array_equal(out[:, :kept], np.broadcast_to(free[:1, :kept], (B, kept)))
  assert (out[:, kept:] == eos).all()


@pytest.mark.slow  # CI runs it; the default suite stays under 15 minutes
def test_bf16_weights_decode_in_bf16():
  """to_bf16 halves the weights, the cache follows, and where float32's top two logits are
  far apart bfloat16 picks the same first token."""
  model, params = gpt.GPT(LLAMA), random_params(LLAMA)
  bmodel, bparams = sampling.to_bf16(model, params)
  assert {x.dtype for x in jax.tree.leaves(bparams)} == {jnp.dtype(jnp.bfloat16)}
  cache = jax.eval_shape(
    lambda: bmodel.init(jax.random.PRNGKey(0), jnp.zeros((B, 8), jnp.int32), decode=True)["cache"]
  )
  kv = [x for x in jax.tree.leaves(nn.meta.unbox(cache)) if x.ndim >= 4]
  assert kv and all(x.dtype == jnp.bfloat16 for x in kv)
  prompt = prompts()
  logits = np.asarray(full_logits_fn(LLAMA)({"params": params}, prompt))[:, -1]
  logits16 = np.asarray(bmodel.apply({"params": bparams}, prompt), np.float32)[:, -1]
  np.testing.assert_allclose(logits16, logits, atol=0.05)  # logits spread ~0.6
  f32 = generate(LLAMA, prompt, GREEDY)
  b16 = np.asarray(sampling.generate(bmodel, bparams, prompt, jax.random.PRNGKey(0), GREEDY))
  top2 = np.sort(logits, -1)
  clear = top2[:, -1] - top2[:, -2] > 0.1  # beyond bfloat16's error
  assert clear.sum() >= 2
  np.testing.assert_array_equal(b16[clear, P], f32[clear, P])


def test_kv_cache_is_sharded_by_logical_names():
  """The cache's logical names map to (data, fsdp) rows and tensor-split kv heads, and
  greedy decoding on a (data 2, tensor 2) mesh equals one device."""
  model, params = gpt.GPT(LLAMA), random_params(LLAMA)
  cache = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((B, 8), jnp.int32), decode=True)["cache"]
  )
  specs = {
    jax.tree_util.keystr(k): s
    for k, s in jax.tree_util.tree_leaves_with_path(
      nn.logical_to_mesh(nn.get_partition_spec(cache), sharding.DEFAULT_RULES)
    )
  }
  key = next(k for k in specs if "cached_key" in k)  # (layers, B, S, K, H) under nn.scan
  assert tuple(specs[key])[-4:] == (("data", "fsdp"), None, "tensor", None)
  prompt = prompts()
  want = generate(LLAMA, prompt, GREEDY)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, jax.devices()[:4])
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
    got = sampling.generate(model, params, prompt, jax.random.PRNGKey(0), GREEDY)
  np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.slow  # CI runs it; the default suite stays under 15 minutes
def test_sample_texts_decodes_several_prompts_in_one_batch():
  trainable = trainable_for(LEARNED)
  params = random_params(LEARNED)
  texts = sampling.sample_texts(trainable, params, CHARS, ["abcd", "ab", "abc"], GREEDY)
  assert [len(t) for t in texts] == [1, 1, 1]
  for prompt, (text,) in zip(["abcd", "ab", "abc"], texts, strict=True):
    alone = sampling.sample_text(trainable, params, CHARS, prompt, GREEDY)
    assert text == alone


def test_padding_rows_of_the_vocabulary_are_never_chosen():
  """A model's vocabulary is padded past the tokenizer's (pad_vocab_to); those ids decode to
  nothing, so greedy and sampled choices stay below the tokenizer's vocab_size."""
  logits = jnp.array([[0.0, 1.0, 2.0, 9.0, 9.0]])  # ids 3 and 4 are padding rows
  greedy = sampling.SamplingConfig(temperature=0.0, vocab_size=3)
  assert int(sampling.choose(logits, jax.random.PRNGKey(0), greedy)[0]) == 2
  sampled = sampling.SamplingConfig(temperature=1.0, vocab_size=3)
  picks = [int(sampling.choose(logits, jax.random.PRNGKey(i), sampled)[0]) for i in range(50)]
  assert max(picks) < 3
