"""TFDS-backed text sources and the Grain pipeline (flaxlm/data/); tokenizers are in
test_tokenizers.py."""

import json

import numpy as np
import pytest
from samples import sentencepiece, training_docs

from flaxlm.data import corpus, pipeline, sources, spec
from flaxlm.data.tokenizers import TokenizerConfig
from flaxlm.objectives import causal

LM = causal.causal_lm_objective()

# --- sources ----------------------------------------------------------------------------------


def test_builtin_python_docs(tfds_dir):
  """builtin:python-docs reads back every CPython reference topic, non-empty and in order."""
  docs = sources.open_source("builtin:python-docs", tfds_dir).documents("train")
  assert len(docs) > 50
  assert all(doc.strip() for doc in docs)
  assert docs == sources.python_docs()
  assert sum(map(len, docs)) > 300_000


def test_text_glob_source(tmp_path):
  """text:<glob>,<glob> builds a TFDS dataset with one document per file, in path order."""
  contents = {
    "b.txt": "second file\n  indented\n",
    "a.txt": "first file: ünïcödé 日本語 🎉\n",
    "sub/c.md": "third\n\n\n",
    "skip.json": "{}",
  }
  for name, text in contents.items():
    (tmp_path / name).parent.mkdir(exist_ok=True)
    (tmp_path / name).write_text(text, encoding="utf-8")
  data_dir = str(tmp_path / "tfds")
  spec = f"text:{tmp_path}/*.txt,{tmp_path}/sub/*.md"
  source = sources.open_source(spec, data_dir)
  assert source.documents("train") == [contents["a.txt"], contents["b.txt"], contents["sub/c.md"]]
  assert list(source.splits) == ["train"]

  # Editing a file makes a new dataset rather than reusing the stale one.
  (tmp_path / "a.txt").write_text("rewritten, longer than before\n", encoding="utf-8")
  again = sources.open_source(spec, data_dir).documents("train")
  assert again[0] == "rewritten, longer than before\n"


def test_concurrent_builds_share_the_dataset(tmp_path, monkeypatch):
  """Processes sharing a data_dir (two processes on one machine) may build a dataset at the
  same time; the one that finishes second reads the other's copy instead of failing."""
  (tmp_path / "a.txt").write_text("shared by both processes\n")
  spec, data_dir = f"text:{tmp_path}/*.txt", str(tmp_path / "tfds")
  generate, rivals = sources.LocalText._generate_examples, []

  def generate_while_a_rival_finishes(self):
    if not rivals:  # the other process builds and publishes the same dataset meanwhile
      rivals.append(None)
      rivals[0] = sources.open_source(spec, data_dir)
    yield from generate(self)

  monkeypatch.setattr(sources.LocalText, "_generate_examples", generate_while_a_rival_finishes)
  docs = sources.open_source(spec, data_dir).documents("train")
  assert len(rivals) == 1
  assert docs == rivals[0].documents("train") == ["shared by both processes\n"]


def test_missing_text_path_names_it(tmp_path):
  """A glob that matches nothing raises FileNotFoundError naming the pattern."""
  (tmp_path / "real.txt").write_text("x")
  missing = str(tmp_path / "nothing_here" / "*.txt")
  with pytest.raises(FileNotFoundError, match="nothing_here") as e:
    sources.open_source(f"text:{tmp_path}/real.txt,{missing}", str(tmp_path / "tfds"))
  assert repr(missing) in str(e.value)


def test_non_utf8_file_names_it(tmp_path):
  """A file that is not UTF-8 raises a ValueError naming that file."""
  (tmp_path / "good.txt").write_text("fine")
  bad = tmp_path / "latin1.txt"
  bad.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
  with pytest.raises(ValueError, match="not UTF-8") as e:
    sources.open_source(f"text:{tmp_path}/*.txt", str(tmp_path / "tfds"))
  assert str(bad) in str(e.value)


@pytest.mark.parametrize("spec", ["hf:wikitext", "wikitext", "builtin:shakespeare"])
def test_unknown_dataset_kind(spec, tmp_path):
  """An unknown dataset string fails with a ValueError listing the valid forms."""
  with pytest.raises(ValueError, match="builtin:python-docs"):
    sources.open_source(spec, str(tmp_path))


# --- pipeline ---------------------------------------------------------------------------------


def test_windows_and_lm_example():
  """Windows tile the stream every `stride` tokens; targets are the inputs shifted by one."""
  tokens = np.arange(10, dtype=np.int32)
  packed = corpus.Windows(tokens, 4, 3)
  assert len(packed) == 3
  assert [list(packed[i]) for i in range(3)] == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
  assert len(corpus.Windows(tokens, 4, 1)) == 7
  example = causal.lm_example(packed[1])
  np.testing.assert_array_equal(example["inputs"], [3, 4, 5])
  np.testing.assert_array_equal(example["targets"], [4, 5, 6])
  np.testing.assert_array_equal(example["weights"], np.ones(3, np.float32))
  with pytest.raises(ValueError, match="seq_len"):
    corpus.Windows(tokens, 11, 1)


def stream(n: int = 1000, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 259, n).astype(np.int32)


def test_train_batches_shapes_and_shift():
  """Batches are (batch, seq_len) int32, and every row's targets are its inputs shifted by one."""
  config = spec.DataConfig(seq_len=16, seed=0)
  tokens = np.arange(500, dtype=np.int32)
  ds = pipeline.train_dataset(tokens, config, 4, LM)
  for s in range(5):
    batch = ds[s]
    assert batch["inputs"].shape == batch["targets"].shape == (4, 16)
    assert batch["inputs"].dtype == np.int32
    np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
    np.testing.assert_array_equal(batch["targets"], batch["inputs"] + 1)  # contiguous slices
    assert (batch["inputs"][:, 0] % 16 == 0).all()  # packed: windows start every seq_len


def test_pad_collate_buckets_widths():
  """Rows pad to the batch's longest rounded up to 16 x (1, 2, 3, 4, 6, 8, ...): beyond 32
  columns at most a third of a row is padding, few shapes, and max_width caps it."""
  widths = [pipeline.bucket_width(n) for n in range(1, 1025)]
  assert sorted(set(widths)) == [16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
  assert all(w >= n and (n <= 32 or w <= 1.5 * n) for n, w in enumerate(widths, 1))
  collate = pipeline.pad_collate({"inputs": 0}, max_width=40)
  batch = collate([{"inputs": np.arange(1, n + 1, dtype=np.int32)} for n in (3, 35)])
  assert batch["inputs"].shape == (2, 40) and batch["inputs"].dtype == np.int32
  np.testing.assert_array_equal(batch["inputs"][0], [1, 2, 3] + [0] * 37)
  assert pipeline.pad_collate({"inputs": 0})([{"inputs": np.ones(33, np.int32)}])[
    "inputs"
  ].shape == (1, 48)


def test_train_epochs_are_permutations_reshuffled():
  """Each epoch visits every window exactly once, in a new order each epoch."""
  config = spec.DataConfig(seq_len=4, seed=3)
  tokens = np.arange(41, dtype=np.int32)  # 10 windows of 5 tokens every 4
  ds = pipeline.train_dataset(tokens, config, 2, LM)
  starts = np.concatenate([ds[s]["inputs"][:, 0] for s in range(15)])  # 3 epochs
  epochs = starts.reshape(3, 10)
  for epoch in epochs:
    assert sorted(epoch) == list(range(0, 40, 4))
  assert not np.array_equal(epochs[0], epochs[1])


def test_train_batches_are_a_function_of_seed_and_step():
  """The batch of step s is the same whenever it is built; another seed gives another order."""
  tokens = stream()
  config = spec.DataConfig(seq_len=8, seed=5)
  a = pipeline.train_dataset(tokens, config, 4, LM)
  b = pipeline.train_dataset(tokens.copy(), config, 4, LM)
  other = pipeline.train_dataset(tokens, spec.DataConfig(seq_len=8, seed=6), 4, LM)
  for s in (0, 1, 7, 30, 200):  # 200 is past the first epoch (124 windows)
    np.testing.assert_array_equal(a[s]["inputs"], b[s]["inputs"])
  assert any(not np.array_equal(a[s]["inputs"], other[s]["inputs"]) for s in range(3))


def test_iterator_state_round_trip_resumes_the_stream():
  """Saving the iterator state and restoring it in a fresh iterator continues the same batches."""
  tokens = stream()
  config = spec.DataConfig(seq_len=8, seed=1)
  ds = pipeline.train_dataset(tokens, config, 4, LM)
  it = iter(ds.to_iter_dataset())
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # it is stored as JSON in checkpoints
  expected = [next(it) for _ in range(40)]  # crosses an epoch boundary

  resumed = iter(pipeline.train_dataset(tokens, config, 4, LM).to_iter_dataset())
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got["inputs"], want["inputs"])
    np.testing.assert_array_equal(got["targets"], want["targets"])
  # A fresh run starting at step 7 (trainer: {"next_index": start}) sees the same batch.
  fresh = iter(pipeline.train_dataset(tokens, config, 4, LM).to_iter_dataset())
  fresh.set_state({"next_index": 7})
  np.testing.assert_array_equal(next(fresh)["inputs"], expected[0]["inputs"])
  np.testing.assert_array_equal(ds[7]["inputs"], expected[0]["inputs"])


def test_eval_batches_fixed_and_checked():
  """Eval batches are the first consecutive windows; too small a split fails clearly."""
  config = spec.DataConfig(seq_len=4)
  tokens = np.arange(100, dtype=np.int32)
  batches = pipeline.eval_batches(tokens, config, 3, 2, LM)
  assert len(batches) == 2
  starts = np.concatenate([b["inputs"][:, 0] for b in batches])
  np.testing.assert_array_equal(starts, [0, 4, 8, 12, 16, 20])
  assert len(pipeline.eval_batches(tokens, config, 3, 1000, LM)) == 8  # capped at what exists
  with pytest.raises(ValueError, match="eval_batch_size"):
    pipeline.eval_batches(tokens[:12], config, 3, 1, LM)


def write_docs(directory, docs):
  directory.mkdir(parents=True, exist_ok=True)
  for i, doc in enumerate(docs):
    (directory / f"doc{i:03d}.txt").write_text(doc, encoding="utf-8")
  return f"text:{directory}/*.txt"


def test_validation_is_held_out_tail(tmp_path):
  """Without a validation split, the last val_fraction of the token stream is held out: the
  two splits partition the stream and no training window reaches into validation."""
  docs = list(training_docs()[:6])
  config = spec.DataConfig(
    dataset=write_docs(tmp_path / "text", docs), data_dir=str(tmp_path / "tfds"), seq_len=32
  )
  data = corpus.load_corpus(config, TokenizerConfig(kind="byte"), str(tmp_path / "cache"))
  tok = data.tokenizer
  full = np.concatenate([np.append(tok.encode(d), tok.eos_id) for d in docs])
  assert len(data.validation) == len(full) - int(len(full) * 0.9)
  np.testing.assert_array_equal(np.concatenate([data.train, data.validation]), full)
  # Training windows index positions of the training stream only.
  positions = np.arange(len(data.train), dtype=np.int32)
  ds = pipeline.train_dataset(positions, config, 8, LM)
  epoch = len(corpus.Windows(positions, 33, 32)) // 8
  seen = np.concatenate([ds[s]["targets"].ravel() for s in range(epoch)])
  assert seen.max() < len(data.train)
  assert len(np.unique(seen)) > 0.9 * len(data.train)


def test_load_corpus_caches_and_reuses_tokenizer(tmp_path, monkeypatch):
  """load_corpus writes tokens and tokenizer to the workdir once and reuses them; a tokenizer
  from a checkpoint wins over the cache; a changed dataset rebuilds."""
  docs = list(training_docs()[:4])
  config = spec.DataConfig(
    dataset=write_docs(tmp_path / "text", docs), data_dir=str(tmp_path / "tfds"), seq_len=16
  )
  tok_config = TokenizerConfig(kind="sentencepiece", vocab_size=380)
  cache = tmp_path / "workdir" / "data"
  first = corpus.load_corpus(config, tok_config, str(cache))
  assert {"train", "tokenizer.json", "corpus.json"} <= {p.name for p in cache.iterdir()}
  assert (cache / "train" / "index.json").exists()  # token shards, memory-mapped when read
  assert json.loads((cache / "tokenizer.json").read_text()) == first.tokenizer.to_json()

  opened = []
  real_open = sources.open_source
  monkeypatch.setattr(
    sources, "open_source", lambda *a, **k: opened.append(a) or real_open(*a, **k)
  )
  again = corpus.load_corpus(config, tok_config, str(cache))
  assert opened == []  # served from the cache
  assert again.tokenizer.to_json() == first.tokenizer.to_json()
  np.testing.assert_array_equal(again.train, first.train)
  np.testing.assert_array_equal(again.validation, first.validation)
  same = corpus.load_corpus(config, tok_config, str(cache), tokenizer=first.tokenizer)
  assert opened == []
  np.testing.assert_array_equal(same.train, first.train)

  # The checkpoint's tokenizer differs from the cached one: re-tokenize with it.
  saved = sentencepiece()
  resumed = corpus.load_corpus(config, tok_config, str(cache), tokenizer=saved)
  assert len(opened) == 1
  assert resumed.tokenizer is saved
  expected = np.concatenate([np.append(saved.encode(d), saved.eos_id) for d in docs])
  np.testing.assert_array_equal(np.concatenate([resumed.train, resumed.validation]), expected)

  # Another dataset string is not served a stale cache.
  other = spec.DataConfig(
    dataset=write_docs(tmp_path / "other", ["a different corpus " * 50]),
    data_dir=config.data_dir,
    seq_len=16,
  )
  rebuilt = corpus.load_corpus(other, TokenizerConfig(kind="byte"), str(cache))
  assert len(opened) == 2
  assert len(rebuilt.train) + len(rebuilt.validation) == len("a different corpus " * 50) + 1


@pytest.mark.slow  # CI runs it; the default suite stays under 15 minutes
def test_trainer_never_feeds_validation_tokens(tmp_path, monkeypatch):
  """What the training loop actually feeds: with the held-out tail made of characters the rest
  of the corpus lacks, no training batch contains one."""
  from flaxlm.config import default_config, from_config_dict
  from flaxlm.pretraining import run as pretraining
  from flaxlm.train import loop

  text = "".join(chr(97 + i % 13) for i in range(1800)) + "0123456789" * 20  # last 200: digits
  (tmp_path / "corpus.txt").write_text(text)
  fed = []
  to_global, local_to_global = loop.sharding.to_global, loop.sharding.local_to_global
  monkeypatch.setattr(loop.sharding, "to_global", lambda b, s: fed.append(b) or to_global(b, s))
  monkeypatch.setattr(  # training batches: this host's rows (here all of them)
    loop.sharding, "local_to_global", lambda b, s, n: fed.append(b) or local_to_global(b, s, n)
  )
  c = default_config()
  c.update(dataset=f"text:{tmp_path}/corpus.txt", data_dir=str(tmp_path / "tfds"), seq_len=16,
           batch_size=8, eval_batch_size=8, eval_batches=1, num_train_steps=30, log_every=10,
           eval_every=0, checkpoint_every=0, sample_tokens=0, val_fraction=0.1)  # fmt: skip
  c.model.update(num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32, max_len=32)
  c.tokenizer.kind = "char"
  result = pretraining.train(from_config_dict(c), tmp_path / "workdir")
  digits = {result["tokenizer"].encode(d)[0] for d in "0123456789"}
  train_batches = fed[-30:]  # the eval set is laid out once, before the first step
  assert all("targets" in b for b in train_batches) and len(fed) == 31
  seen = np.unique(
    np.concatenate([np.r_[b["inputs"].ravel(), b["targets"].ravel()] for b in train_batches])
  )
  assert not digits & set(seen.tolist())
  assert digits <= set(np.unique(fed[0]["inputs"]).tolist())  # they are in validation


def test_cache_is_rebuilt_when_an_input_or_a_token_shaping_key_changes(tmp_path):
  """Editing a text: file, or swapping the text fields of a pairs dataset, rebuilds the cached
  tokens instead of silently reusing them."""
  text = tmp_path / "doc.txt"
  text.write_text("first version " * 40)
  config = spec.DataConfig(dataset=f"text:{text}", data_dir=str(tmp_path / "tfds"), seq_len=8)
  tok = TokenizerConfig(kind="byte")
  cache = tmp_path / "cache"
  first = corpus.load_corpus(config, tok, cache)
  text.write_text("second version, longer " * 40)
  second = corpus.load_corpus(config, tok, cache)
  assert len(second.train) != len(first.train)
  assert second.tokenizer.decode(second.train[:14]) == "second version"
  stamp = corpus.cache_stamp(config, tok)
  for key in ("text_feature", "data_dir", "val_fraction"):
    changed = corpus.cache_stamp(
      spec.DataConfig(
        **{
          **config.__dict__,
          key: {"text_feature": "en,de", "data_dir": "/elsewhere", "val_fraction": 0.2}[key],
        }
      ),
      tok,
    )
    assert changed != stamp, key
