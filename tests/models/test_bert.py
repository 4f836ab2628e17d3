"""The BERT encoder and the masked-LM objective: masking statistics, bidirectionality,
padding, the masked-positions-only head, and sharded-equals-single-device training."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxlm import objectives
from flaxlm.models import bert
from flaxlm.objectives import LossConfig, MaskingConfig, masked

VOCAB, B, T = 96, 8, 32
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
TOKENIZER = types.SimpleNamespace(
  vocab_size=VOCAB, special_ids={"pad": PAD, "unk": UNK, "cls": CLS, "sep": SEP, "mask": MASK}
)
TINY = bert.BertConfig(
  vocab_size=VOCAB,
  num_layers=2,
  num_heads=2,
  embed_dim=32,
  mlp_dim=64,
  max_len=T,
  dropout_rate=0.0,
)


def tokens_batch(seed=0, batch=B, pad_from=None):
  """[CLS] ordinary tokens [SEP] rows, optionally padded from column `pad_from`."""
  rng = np.random.default_rng(seed)
  x = rng.integers(5, VOCAB, (batch, T)).astype(np.int32)
  x[:, 0], x[:, -1] = CLS, SEP
  if pad_from is not None:
    x[:, pad_from:] = PAD
  return x


def mask_draws(tokens, masking=MaskingConfig(), seed=0):
  """Stacked (positions, weights, inputs, targets) of the objective's host-side masking."""
  obj = objectives.make_objective("mlm", TOKENIZER, masking=masking, seq_len=T)
  rng = np.random.default_rng(seed)
  rows = [obj.example(row[1:-1], rng) for row in tokens]  # the example adds [CLS] ... [SEP]
  out = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  return out["positions"], out["weights"], out["inputs"], out["targets"]


def test_masking_rate_and_80_10_10_split():
  """Over many draws: 15% of ordinary tokens chosen; of those ~80% [MASK], ~10% random, ~10% kept."""
  tokens = tokens_batch(batch=512)
  positions, weights, inputs, targets = mask_draws(tokens)
  chosen = weights > 0
  n_ordinary = T - 2
  assert np.all(chosen.sum(1) == round(0.15 * n_ordinary))
  original = np.take_along_axis(tokens, positions, 1)
  np.testing.assert_array_equal(targets, original)
  original = original[chosen]
  new = np.take_along_axis(inputs, positions, 1)[chosen]
  masked = np.mean(new == MASK)
  kept = np.mean(new == original)
  randomized = 1 - masked - kept
  # ~2,300 draws: the standard error of each share is < 1%.
  assert abs(masked - 0.8) < 0.03, masked
  assert abs(kept - (0.1 + 0.1 / (VOCAB - 5))) < 0.025, kept  # random can redraw the original
  assert abs(randomized - 0.1) < 0.025, randomized
  # Nothing outside the chosen slots changed.
  untouched = inputs.copy()
  rows = np.arange(len(tokens))[:, None]
  untouched[rows, positions] = np.take_along_axis(tokens, positions, 1)
  np.testing.assert_array_equal(untouched, tokens)


def test_special_tokens_and_padding_never_chosen_or_drawn():
  tokens = tokens_batch(batch=256, pad_from=20)
  positions, weights, inputs, _ = mask_draws(tokens, seed=3)
  chosen_tokens = np.take_along_axis(tokens, positions, 1)[weights > 0]
  assert not np.isin(chosen_tokens, [PAD, UNK, CLS, SEP, MASK]).any()
  # random replacements are ordinary tokens only
  new = np.take_along_axis(inputs, positions, 1)[weights > 0]
  assert not np.isin(new, [PAD, UNK, CLS, SEP]).any()
  assert np.all((weights > 0).sum(1) == round(0.15 * 18))


def test_masks_are_fresh_per_draw_and_reproducible():
  """Dynamic masking: another generator state gives another mask; the same one repeats."""
  tokens = tokens_batch()
  a = mask_draws(tokens, seed=1)[0]
  np.testing.assert_array_equal(a, mask_draws(tokens, seed=1)[0])
  assert not np.array_equal(a, mask_draws(tokens, seed=2)[0])


def test_pipeline_remasks_each_epoch_and_resumes_exactly():
  """Through Grain: a sequence seen again in a later epoch gets a new mask; batch s is a
  pure function of (seed, s)."""
  from flaxlm.data import pipeline, spec

  obj = objectives.make_objective("mlm", TOKENIZER, masking=MaskingConfig(), seq_len=T)
  stream = np.random.default_rng(0).integers(5, VOCAB, 4 * (T - 2)).astype(np.int32)
  config = spec.DataConfig(seq_len=T, seed=0)
  ds = pipeline.train_dataset(stream, config, 4, obj)  # one batch = one epoch of 4 windows
  first, second = ds[0], ds[1]
  order = lambda b: np.argsort(b["targets"][:, 0] * 0 + b["inputs"][:, 1:].sum(1))
  assert not np.array_equal(first["positions"][order(first)], second["positions"][order(second)])
  again = pipeline.train_dataset(stream, config, 4, obj)[1]
  for k in second:
    np.testing.assert_array_equal(second[k], again[k])


def test_whole_word_masking_takes_whole_words():
  """With word starts, every chosen word is taken whole (only the last word may be cut)."""
  rng = np.random.default_rng(0)
  word_start = (rng.random(VOCAB) < 0.4).astype(np.int32)
  word_start[[CLS, SEP]] = 1
  tokens = tokens_batch(batch=64)
  special = np.array([PAD, UNK, CLS, SEP, MASK])
  for row in tokens:
    ex = masked.mask_example(
      row, rng, MaskingConfig(whole_word=True), special, MASK, np.arange(5, VOCAB), word_start, 8
    )
    word_ids = np.cumsum(word_start[row])
    chosen = ex["positions"][ex["weights"] > 0]
    words = word_ids[chosen]
    for w in set(words) - {words[-1]}:
      members = np.flatnonzero((word_ids == w) & ~np.isin(row, special))
      assert set(members) <= set(chosen), w


def init(config=TINY, seed=0):
  model = bert.Bert(config)
  return model, model.init(jax.random.PRNGKey(seed), jnp.zeros((1, T), jnp.int32))["params"]


def test_encoder_is_bidirectional():
  """Changing a later token changes the hidden state of earlier positions."""
  model, params = init()
  x = tokens_batch(batch=2)
  y = x.copy()
  y[:, 20] = (y[:, 20] + 1 - 5) % (VOCAB - 5) + 5
  hx = model.apply({"params": params}, x)["hidden"]
  hy = model.apply({"params": params}, y)["hidden"]
  assert np.abs(np.asarray(hx[:, :20] - hy[:, :20])).max() > 1e-4


def test_padding_does_not_change_real_positions():
  """With segment_ids marking padding, what sits in the padded slots has no effect."""
  model, params = init()
  x = tokens_batch(batch=2, pad_from=24)
  seg = (x != PAD).astype(np.int32)
  y = x.copy()
  y[:, 24:] = 7  # garbage where padding was
  hx = model.apply({"params": params}, x, segment_ids=seg)["hidden"]
  hy = model.apply({"params": params}, y, segment_ids=seg)["hidden"]
  np.testing.assert_allclose(hx[:, :24], hy[:, :24], atol=1e-6)


def test_masked_positions_head_equals_full_head():
  model, params = init()
  x = tokens_batch(batch=2)
  pos = jnp.asarray([[1, 5, 9], [30, 2, 2]])
  full = model.apply({"params": params}, x)["mlm_logits"]
  some = model.apply({"params": params}, x, mlm_positions=pos)["mlm_logits"]
  np.testing.assert_allclose(
    some, np.take_along_axis(np.asarray(full), np.asarray(pos)[..., None], 1), atol=1e-5
  )


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_type_ids_and_nsp_head(norm_position):
  config = dataclasses.replace(TINY, norm_position=norm_position)
  model, params = init(config)
  x = tokens_batch(batch=2)
  types_ = np.zeros_like(x)
  types_[:, 16:] = 1
  a = model.apply({"params": params}, x)
  b = model.apply({"params": params}, x, type_ids=types_)
  assert a["nsp_logits"].shape == (2, 2) and a["pooled"].shape == (2, 32)
  assert np.abs(np.asarray(a["hidden"] - b["hidden"])).max() > 1e-4


def mlm_batch(seed=0):
  obj = objectives.make_objective("mlm", TOKENIZER, masking=MaskingConfig(), seq_len=T)
  rng = np.random.default_rng(seed)
  rows = [obj.example(row[1:-1], rng) for row in tokens_batch(seed)]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_mlm_loss_counts_only_chosen_positions():
  """Loss and accuracy count the chosen slots; the at-[MASK] accuracy counts exactly the
  chosen slots whose input shows [MASK] (not those left unchanged or randomized)."""
  obj = objectives.make_objective("mlm", TOKENIZER, masking=MaskingConfig(), seq_len=T)
  model, params = init()
  batch = mlm_batch()
  sums = obj.loss(model, params, batch, jax.random.PRNGKey(0), True, LossConfig())
  assert float(sums["weight_sum"]) == B * round(0.15 * (T - 2))
  assert np.isfinite(float(sums["loss_sum"]))

  shown = np.take_along_axis(batch["inputs"], batch["positions"], 1)
  at_mask = (batch["weights"] > 0) & (shown == MASK)
  np.testing.assert_array_equal(batch["at_mask"], at_mask)
  assert 0 < at_mask.sum() < (batch["weights"] > 0).sum()
  logits = model.apply(
    {"params": params}, batch["inputs"], mlm_positions=batch["positions"], deterministic=True
  )["mlm_logits"]
  correct = np.asarray(logits).argmax(-1) == batch["targets"]
  assert float(sums["at_mask_count"]) == at_mask.sum()
  assert float(sums["at_mask_correct_sum"]) == (correct & at_mask).sum()


def test_mlm_needs_special_tokens():
  plain = types.SimpleNamespace(vocab_size=VOCAB, special_ids={"pad": 0, "eos": 1})
  with pytest.raises(ValueError, match="special_tokens=bert"):
    objectives.make_objective("mlm", plain, masking=MaskingConfig(), seq_len=T)


@pytest.mark.parametrize("axes", [pytest.param((2, 2, 2), marks=pytest.mark.slow), (1, 4, 2)])
def test_sharded_mlm_steps_equal_single_device(axes, sharded_equals_single_device):
  """Three MLM steps (with dropout, scanned layers) on a mesh equal the 1-device steps."""
  model = bert.Bert(dataclasses.replace(TINY, scan_layers=True, dropout_rate=0.1))
  sharded_equals_single_device(model, objectives.masked_lm, mlm_batch(), axes)


# ----------------------------------------------------------------------------- NSP


def spec_config(seq_len):
  from flaxlm.data import spec

  return spec.DataConfig(seq_len=seq_len)


def nsp_examples(n=400, seed=0):
  """NSP examples over a stream of distinct tokens 5.. (so B's origin is recoverable)."""
  obj = objectives.make_objective("mlm_nsp", TOKENIZER, masking=MaskingConfig(), seq_len=T)
  from flaxlm.data import pipeline, spec

  stream = (np.arange(5, 5 + 40 * T) % (VOCAB - 5) + 5).astype(np.int32)
  data = spec.DataConfig(seq_len=T)
  ds = pipeline.train_dataset(stream, data, global_batch=1, objective=obj)
  return obj, [jax.tree.map(lambda x: x[0], ds[i]) for i in range(n)]


def test_nsp_pairs_half_continue_and_carry_segment_ids():
  obj, examples = nsp_examples()
  windows = obj.records(np.zeros(10 * T, np.int32), spec_config(T), 0)
  assert len(windows[0][0]) == T - 3  # [CLS] A [SEP] B [SEP]
  labels = np.array([int(e["nsp_labels"]) for e in examples])
  assert 0.4 < labels.mean() < 0.6  # 50% IsNext
  follows = []
  for e in examples:
    tokens = e["inputs"].copy()
    tokens[e["positions"][e["weights"] > 0]] = e["targets"][e["weights"] > 0]  # unmask
    seps = np.flatnonzero(tokens == SEP)
    assert tokens[0] == CLS and len(seps) == 2 and seps[1] == T - 1
    a, b = tokens[1 : seps[0]], tokens[seps[0] + 1 : seps[1]]
    assert len(a) >= 1 and len(b) >= 1
    np.testing.assert_array_equal(e["type_ids"], np.arange(T) > seps[0])  # B [SEP] are type 1
    follows.append((b[0] - a[-1]) % (VOCAB - 5) == 1)  # the stream counts up by one
    assert not np.isin(e["positions"][e["weights"] > 0], [0, seps[0], seps[1]]).any()
  follows = np.array(follows)
  assert follows[labels == 1].all()  # IsNext: B continues A
  assert follows[labels == 0].mean() < 0.2  # NotNext: B comes from elsewhere


def test_mlm_nsp_loss_adds_the_nsp_term_and_reports_accuracy():
  obj, examples = nsp_examples(n=8)
  batch = {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in examples[0]}
  model = bert.Bert(TINY)
  params = model.init(jax.random.PRNGKey(0), batch["inputs"])["params"]
  mlm = objectives.masked_lm(model, params, batch, None, True, LossConfig())
  both = objectives.masked_lm_nsp(model, params, batch, None, True, LossConfig())
  out = model.apply({"params": params}, batch["inputs"], type_ids=batch["type_ids"])
  nsp_nll = -jax.nn.log_softmax(out["nsp_logits"])[jnp.arange(8), batch["nsp_labels"]]
  p = batch["weights"].shape[1]
  np.testing.assert_allclose(both["loss_sum"], mlm["loss_sum"] + p * nsp_nll.sum(), rtol=1e-5)
  hand_count = int(
    (np.asarray(out["nsp_logits"]).argmax(-1) == np.asarray(batch["nsp_labels"])).sum()
  )
  assert both["nsp_count"] == 8 and int(both["nsp_correct_sum"]) == hand_count
  no_head = bert.Bert(dataclasses.replace(TINY, nsp_head=False))
  with pytest.raises(ValueError, match="nsp_head"):
    objectives.masked_lm_nsp(no_head, params, batch, None, True, LossConfig())
