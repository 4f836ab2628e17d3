"""Tokenizers, TFDS-backed text sources and the Grain pipeline (flaxlm/data/)."""

import functools
import json

import numpy as np
import pytest

from flaxlm.data import pipeline, sources, tokenizers
from flaxlm.data.tokenizers import TokenizerConfig
from flaxlm.objectives import causal, masked

TEXTS = [
  "Hello, world!",
  "",
  " ",
  "  two  spaces,\ta tab,\n\nblank lines and a trailing newline\n",
  "\r\nwindows line end\r\n",
  "héllo wörld — ünïcödé, 日本語のテキスト, emoji 🎉🚀, combining e\u0301",
  "\u00a0no-break space, zero\u200bwidth, ﬁ ligature, ＡＢＣ fullwidth",
  "def f(x):\n    return x ** 2  # 12345 67890\n",
]


@functools.cache
def training_docs() -> tuple[str, ...]:
  """About 50 kB of English prose and code samples that ship with CPython."""
  return tuple(sources.python_docs()[:12])


@functools.cache
def sentencepiece(model_type: str = "bpe") -> tokenizers.SentencePieceTokenizer:
  config = TokenizerConfig(kind="sentencepiece", vocab_size=400, model_type=model_type)
  return tokenizers.train_tokenizer(config, list(training_docs()))


# --- tokenizers -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_byte_tokenizer_round_trips(text):
  """Bytes encode any string losslessly, with ids below the special ids."""
  tok = tokenizers.ByteTokenizer()
  ids = tok.encode(text)
  assert all(0 <= i < 256 for i in ids)
  assert tok.decode(ids) == text
  assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == text


@pytest.mark.parametrize("text", TEXTS)
def test_char_tokenizer_round_trips(text):
  """A char vocabulary trained on the text decodes it back exactly."""
  tok = tokenizers.CharTokenizer.train(["".join(TEXTS)])
  ids = tok.encode(text)
  assert len(ids) == len(text)
  assert tok.decode(ids) == text


def test_char_tokenizer_unknown_character_error():
  """A character outside the vocabulary fails with a ValueError naming the character."""
  tok = tokenizers.CharTokenizer.train(["abc"])
  with pytest.raises(ValueError, match=r"'z'.*char-level vocabulary"):
    tok.encode("abz")


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_round_trips(model_type, text):
  """SentencePiece keeps whitespace, newlines and characters never seen in training (byte fallback)."""
  tok = sentencepiece(model_type)
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert tok.decode([tok.bos_id, *ids, tok.eos_id]) == text  # special ids decode to nothing


def test_sentencepiece_round_trips_its_training_text():
  """Whole documents (long runs of spaces, indentation, blank lines) survive encode/decode."""
  tok = sentencepiece()
  for doc in training_docs():
    assert tok.decode(tok.encode(doc)) == doc


def test_sentencepiece_compresses_and_is_sized_as_asked():
  """The trained vocabulary has the requested size and merges characters into pieces."""
  tok = sentencepiece()
  assert tok.vocab_size == 400
  doc = training_docs()[0]
  assert len(tok.encode(doc)) < 0.8 * len(doc.encode("utf-8"))  # 400 - 261 byte/special pieces


def test_sentencepiece_training_is_deterministic():
  """Every host trains its own tokenizer on the same text; they must agree bit for bit."""
  config = TokenizerConfig(kind="sentencepiece", vocab_size=400)
  again = tokenizers.train_tokenizer(config, list(training_docs()))
  assert again.model_proto == sentencepiece().model_proto


@pytest.mark.parametrize("kind", ["byte", "char", "sentencepiece"])
def test_tokenizer_json_round_trip(kind):
  """to_json is plain JSON, and the tokenizer rebuilt from it encodes and decodes identically."""
  if kind == "sentencepiece":
    tok = sentencepiece()
  else:
    tok = tokenizers.train_tokenizer(TokenizerConfig(kind=kind), ["".join(TEXTS)])
  restored = tokenizers.tokenizer_from_json(json.loads(json.dumps(tok.to_json())))
  assert type(restored) is type(tok)
  assert restored.vocab_size == tok.vocab_size
  assert (restored.pad_id, restored.eos_id, restored.bos_id) == (tok.pad_id, tok.eos_id, tok.bos_id)
  for text in TEXTS:
    assert restored.encode(text) == tok.encode(text)
    assert restored.decode(tok.encode(text)) == text


def test_unknown_tokenizer_kinds():
  """A bad tokenizer.kind, and a saved tokenizer of unknown kind, fail with clear ValueErrors."""
  with pytest.raises(ValueError, match="tokenizer.kind='tiktoken'.*'wordpiece'"):
    tokenizers.train_tokenizer(TokenizerConfig(kind="tiktoken"), ["x"])
  with pytest.raises(ValueError, match="unknown kind 'tiktoken'"):
    tokenizers.tokenizer_from_json({"kind": "tiktoken"})
  with pytest.raises(ValueError, match="special_tokens / lowercase need"):
    tokenizers.train_tokenizer(TokenizerConfig(kind="byte", lowercase=True), ["x"])


@functools.cache
def wordpiece(special_tokens: str = "bert") -> tokenizers.WordPieceTokenizer:
  config = TokenizerConfig(
    kind="wordpiece", vocab_size=600, special_tokens=special_tokens, lowercase=True
  )
  return tokenizers.train_tokenizer(config, list(training_docs()))


def test_wordpiece_is_bert_style():
  """Uncased WordPiece: reserved ids first, punctuation split off, '##' continues a word,
  decoding gives the normalized text back, and the vocabulary is the size asked."""
  tok = wordpiece()
  assert tok.special_ids == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
  assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, None, None)
  assert tok.vocab_size == 600
  text = "The Interpreter's objects, (re)defined:\n  NOTHING\tchanges."
  pieces = [tok.tok.id_to_token(i) for i in tok.encode(text)]
  assert pieces[:2] == ["the", "inte"] and "'" in pieces and "(" in pieces
  assert all(p == p.lower() for p in pieces)
  assert any(p.startswith("##") for p in pieces)  # 'nothing' and 'changes' are split
  assert (
    tok.decode(tok.encode(text)) == "the interpreter ' s objects, ( re ) defined : nothing changes."
  )
  # Reserved tokens in text are not produced by encoding; decoding drops [CLS]/[SEP]/[PAD].
  assert tok.decode([2, *tok.encode("hello world"), 3, 0, 0]) == "hello world"
  starts = masked.word_start_table(tok)  # whole-word masking's view of the vocabulary
  for piece, i in tok.tok.get_vocab().items():
    assert starts[i] == (not piece.startswith("##")), piece
  sp_starts = masked.word_start_table(sentencepiece())
  assert sp_starts[sentencepiece().encode(" interpreter")[0]] == 1
  with pytest.raises(ValueError, match="whole_word needs a subword tokenizer"):
    masked.word_start_table(tokenizers.ByteTokenizer())


def test_wordpiece_json_round_trip():
  """to_json is plain JSON, and the rebuilt tokenizer encodes and decodes identically (what
  resuming relies on: Hugging Face's WordPiece training is not deterministic, so a run keeps
  the tokenizer it trained rather than training it again)."""
  tok = wordpiece()
  restored = tokenizers.tokenizer_from_json(json.loads(json.dumps(tok.to_json())))
  assert type(restored) is tokenizers.WordPieceTokenizer
  assert restored.special_ids == tok.special_ids and restored.vocab_size == tok.vocab_size
  for text in TEXTS:
    assert restored.encode(text) == tok.encode(text)
    assert restored.decode(tok.encode(text)) == tok.decode(tok.encode(text))


def test_wordpiece_t5_sentinels_and_unknown_characters():
  """T5's layout (<pad> </s> <unk>, 100 sentinels) works for WordPiece too; characters never
  seen in training become the unknown token rather than failing."""
  tok = wordpiece("t5")
  assert [tok.special_ids[n] for n in ("pad", "eos", "unk")] == [0, 1, 2]
  assert tok.special_ids["sentinel_99"] == 102 and tok.eos_id == 1
  assert tok.encode("日本語") == [tok.special_ids["unk"]] * 3
  with pytest.raises(ValueError, match="special_tokens='gpt'"):
    tokenizers.train_tokenizer(
      TokenizerConfig(kind="wordpiece", special_tokens="gpt"), list(training_docs())
    )


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
  packed = pipeline.Windows(tokens, 4, 3)
  assert len(packed) == 3
  assert [list(packed[i]) for i in range(3)] == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
  assert len(pipeline.Windows(tokens, 4, 1)) == 7
  example = causal.lm_example(packed[1])
  np.testing.assert_array_equal(example["inputs"], [3, 4, 5])
  np.testing.assert_array_equal(example["targets"], [4, 5, 6])
  np.testing.assert_array_equal(example["weights"], np.ones(3, np.float32))
  with pytest.raises(ValueError, match="seq_len"):
    pipeline.Windows(tokens, 11, 1)


def stream(n: int = 1000, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 259, n).astype(np.int32)


def test_train_batches_shapes_and_shift():
  """Batches are (batch, seq_len) int32, and every row's targets are its inputs shifted by one."""
  config = pipeline.DataConfig(seq_len=16, seed=0)
  tokens = np.arange(500, dtype=np.int32)
  ds = pipeline.train_dataset(tokens, config, 4)
  for s in range(5):
    batch = ds[s]
    assert batch["inputs"].shape == batch["targets"].shape == (4, 16)
    assert batch["inputs"].dtype == np.int32
    np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
    np.testing.assert_array_equal(batch["targets"], batch["inputs"] + 1)  # contiguous slices
    assert (batch["inputs"][:, 0] % 16 == 0).all()  # packed: windows start every seq_len


def test_train_epochs_are_permutations_reshuffled():
  """Each epoch visits every window exactly once, in a new order each epoch."""
  config = pipeline.DataConfig(seq_len=4, seed=3)
  tokens = np.arange(41, dtype=np.int32)  # 10 windows of 5 tokens every 4
  ds = pipeline.train_dataset(tokens, config, 2)
  starts = np.concatenate([ds[s]["inputs"][:, 0] for s in range(15)])  # 3 epochs
  epochs = starts.reshape(3, 10)
  for epoch in epochs:
    assert sorted(epoch) == list(range(0, 40, 4))
  assert not np.array_equal(epochs[0], epochs[1])


def test_train_batches_are_a_function_of_seed_and_step():
  """The batch of step s is the same whenever it is built; another seed gives another order."""
  tokens = stream()
  config = pipeline.DataConfig(seq_len=8, seed=5)
  a = pipeline.train_dataset(tokens, config, 4)
  b = pipeline.train_dataset(tokens.copy(), config, 4)
  other = pipeline.train_dataset(tokens, pipeline.DataConfig(seq_len=8, seed=6), 4)
  for s in (0, 1, 7, 30, 200):  # 200 is past the first epoch (124 windows)
    np.testing.assert_array_equal(a[s]["inputs"], b[s]["inputs"])
  assert any(not np.array_equal(a[s]["inputs"], other[s]["inputs"]) for s in range(3))


def test_iterator_state_round_trip_resumes_the_stream():
  """Saving the iterator state and restoring it in a fresh iterator continues the same batches."""
  tokens = stream()
  config = pipeline.DataConfig(seq_len=8, seed=1)
  ds = pipeline.train_dataset(tokens, config, 4)
  it = iter(ds.to_iter_dataset())
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # it is stored as JSON in checkpoints
  expected = [next(it) for _ in range(40)]  # crosses an epoch boundary

  resumed = iter(pipeline.train_dataset(tokens, config, 4).to_iter_dataset())
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got["inputs"], want["inputs"])
    np.testing.assert_array_equal(got["targets"], want["targets"])
  # A fresh run starting at step 7 (trainer: {"next_index": start}) sees the same batch.
  fresh = iter(pipeline.train_dataset(tokens, config, 4).to_iter_dataset())
  fresh.set_state({"next_index": 7})
  np.testing.assert_array_equal(next(fresh)["inputs"], expected[0]["inputs"])
  np.testing.assert_array_equal(ds[7]["inputs"], expected[0]["inputs"])


def test_eval_batches_fixed_and_checked():
  """Eval batches are the first consecutive windows; too small a split fails clearly."""
  config = pipeline.DataConfig(seq_len=4)
  tokens = np.arange(100, dtype=np.int32)
  batches = pipeline.eval_batches(tokens, config, 3, 2)
  assert len(batches) == 2
  starts = np.concatenate([b["inputs"][:, 0] for b in batches])
  np.testing.assert_array_equal(starts, [0, 4, 8, 12, 16, 20])
  assert len(pipeline.eval_batches(tokens, config, 3, 1000)) == 8  # capped at what exists
  with pytest.raises(ValueError, match="eval_batch_size"):
    pipeline.eval_batches(tokens[:12], config, 3, 1)


def write_docs(directory, docs):
  directory.mkdir(parents=True, exist_ok=True)
  for i, doc in enumerate(docs):
    (directory / f"doc{i:03d}.txt").write_text(doc, encoding="utf-8")
  return f"text:{directory}/*.txt"


def test_validation_is_held_out_tail(tmp_path):
  """Without a validation split, the last val_fraction of the token stream is held out: the
  two splits partition the stream and no training window reaches into validation."""
  docs = list(training_docs()[:6])
  config = pipeline.DataConfig(
    dataset=write_docs(tmp_path / "text", docs), data_dir=str(tmp_path / "tfds"), seq_len=32
  )
  corpus = pipeline.load_corpus(config, TokenizerConfig(kind="byte"), str(tmp_path / "cache"))
  tok = corpus.tokenizer
  full = np.concatenate([np.append(tok.encode(d), tok.eos_id) for d in docs])
  assert len(corpus.validation) == len(full) - int(len(full) * 0.9)
  np.testing.assert_array_equal(np.concatenate([corpus.train, corpus.validation]), full)
  # Training windows index positions of the training stream only.
  positions = np.arange(len(corpus.train), dtype=np.int32)
  ds = pipeline.train_dataset(positions, config, 8)
  epoch = len(pipeline.Windows(positions, 33, 32)) // 8
  seen = np.concatenate([ds[s]["targets"].ravel() for s in range(epoch)])
  assert seen.max() < len(corpus.train)
  assert len(np.unique(seen)) > 0.9 * len(corpus.train)


def test_load_corpus_caches_and_reuses_tokenizer(tmp_path, monkeypatch):
  """load_corpus writes tokens and tokenizer to the workdir once and reuses them; a tokenizer
  from a checkpoint wins over the cache; a changed dataset rebuilds."""
  docs = list(training_docs()[:4])
  config = pipeline.DataConfig(
    dataset=write_docs(tmp_path / "text", docs), data_dir=str(tmp_path / "tfds"), seq_len=16
  )
  tok_config = TokenizerConfig(kind="sentencepiece", vocab_size=380)
  cache = tmp_path / "workdir" / "data"
  first = pipeline.load_corpus(config, tok_config, str(cache))
  assert {"train.npy", "validation.npy", "tokenizer.json", "corpus.json"} <= {
    p.name for p in cache.iterdir()
  }
  assert json.loads((cache / "tokenizer.json").read_text()) == first.tokenizer.to_json()

  opened = []
  real_open = sources.open_source
  monkeypatch.setattr(
    sources, "open_source", lambda *a, **k: opened.append(a) or real_open(*a, **k)
  )
  again = pipeline.load_corpus(config, tok_config, str(cache))
  assert opened == []  # served from the cache
  assert again.tokenizer.to_json() == first.tokenizer.to_json()
  np.testing.assert_array_equal(again.train, first.train)
  np.testing.assert_array_equal(again.validation, first.validation)
  same = pipeline.load_corpus(config, tok_config, str(cache), tokenizer=first.tokenizer)
  assert opened == []
  np.testing.assert_array_equal(same.train, first.train)

  # The checkpoint's tokenizer differs from the cached one: re-tokenize with it.
  saved = sentencepiece()
  resumed = pipeline.load_corpus(config, tok_config, str(cache), tokenizer=saved)
  assert len(opened) == 1
  assert resumed.tokenizer is saved
  expected = np.concatenate([np.append(saved.encode(d), saved.eos_id) for d in docs])
  np.testing.assert_array_equal(np.concatenate([resumed.train, resumed.validation]), expected)

  # Another dataset string is not served a stale cache.
  other = pipeline.DataConfig(
    dataset=write_docs(tmp_path / "other", ["a different corpus " * 50]),
    data_dir=config.data_dir,
    seq_len=16,
  )
  rebuilt = pipeline.load_corpus(other, TokenizerConfig(kind="byte"), str(cache))
  assert len(opened) == 2
  assert len(rebuilt.train) + len(rebuilt.validation) == len("a different corpus " * 50) + 1
