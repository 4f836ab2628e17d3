"""Tokenizers (flaxlm/data/tokenizers.py): round trips, serialization, reserved tokens,
SentencePiece and WordPiece."""

import functools
import json

import pytest
from samples import sentencepiece, training_docs

from flaxlm.data import tokenizers
from flaxlm.data.tokenizers import TokenizerConfig
from flaxlm.data.tokenizers.wordpiece import WordPieceTokenizer
from flaxlm.objectives import masked

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
def wordpiece(special_tokens: str = "bert") -> WordPieceTokenizer:
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
  assert type(restored) is WordPieceTokenizer
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


# Trains every tokenizer kind on the same text and prints a digest of each; two processes
# (each with its own hash seeds, which is what made Hugging Face's trainer differ) must agree.
DIGESTS = """
import hashlib, json
from samples import training_docs
from flaxlm.data import tokenizers
docs = list(training_docs())
for kind, extra in [("sentencepiece", {}), ("sentencepiece", {"model_type": "unigram"}),
                    ("wordpiece", {"special_tokens": "bert", "lowercase": True}),
                    ("byte", {}), ("char", {}), ("word", {"lowercase": True})]:
  config = tokenizers.TokenizerConfig(kind=kind, vocab_size=500, **extra)
  tok = tokenizers.train_tokenizer(config, docs)
  print(kind, hashlib.sha256(json.dumps(tok.to_json(), sort_keys=True).encode()).hexdigest())
"""


def test_every_tokenizer_trains_the_same_in_two_processes():
  """Two fresh runs of one config must train the same tokenizer (and so the same model)."""
  import os
  import pathlib
  import subprocess
  import sys

  here = pathlib.Path(__file__).parent.parent  # tests/
  env = {**os.environ, "PYTHONPATH": f"{here}:{here.parent}", "PYTHONHASHSEED": "random"}
  outs = [
    subprocess.run(
      [sys.executable, "-c", DIGESTS], env=env, capture_output=True, text=True, timeout=300
    )
    for _ in range(2)
  ]
  for out in outs:
    assert out.returncode == 0, out.stderr[-2000:]
  assert len(outs[0].stdout.splitlines()) == 6
  assert outs[0].stdout == outs[1].stdout
