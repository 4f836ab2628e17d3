"""Tokenizers: SentencePiece (BPE or unigram) or BERT's WordPiece, trained here; bytes; characters.

Each tokenizer serializes to a JSON-able dict that is written to the workdir and into every
checkpoint, so sampling always decodes with the tokenizer the model was trained with.
"""

from __future__ import annotations

import base64
import dataclasses
import io

import numpy as np
import sentencepiece as spm


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  kind: str = "sentencepiece"  # sentencepiece | wordpiece | byte | char
  vocab_size: int = 2048  # sentencepiece and wordpiece
  model_type: str = "bpe"  # bpe | unigram
  max_training_chars: int = 20_000_000
  special_tokens: str = ""  # '' (pad/unk/bos/eos) | 'bert' | 't5': see SPECIAL_TOKENS
  lowercase: bool = False  # case-fold while tokenizing (uncased BERT); breaks exact round trips


# Reserved pieces per model family (sentencepiece only). BERT/RoBERTa: [PAD] [UNK] [CLS]
# [SEP] [MASK], no BOS/EOS. T5: <pad> </s> <unk> and 100 sentinels <extra_id_0..99>.
# With '' the tokenizer round-trips text exactly (newlines and runs of spaces are pieces);
# 'bert' and 't5' normalize whitespace like WordPiece / T5's vocabulary (words, no
# whitespace-only pieces), which is what their objectives predict.
NUM_SENTINELS = 100
SPECIAL_TOKENS = {
  "": dict(pad_id=0, unk_id=1, bos_id=2, eos_id=3, user_defined_symbols=[]),
  "bert": dict(
    pad_id=0,
    unk_id=1,
    bos_id=-1,
    eos_id=-1,
    pad_piece="[PAD]",
    unk_piece="[UNK]",
    user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"],
  ),
  "t5": dict(
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    user_defined_symbols=[f"<extra_id_{i}>" for i in range(NUM_SENTINELS)],
  ),
}


class ByteTokenizer:
  """UTF-8 bytes 0..255, then pad 256, eos 257, bos 258."""

  pad_id, eos_id, bos_id = 256, 257, 258
  vocab_size = 259
  special_ids = {"pad": 256, "eos": 257, "bos": 258}

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids) -> str:
    return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

  def to_json(self) -> dict:
    return {"kind": "byte"}


class CharTokenizer:
  """One id per character seen in the corpus (nanoGPT's shakespeare_char); no special ids."""

  pad_id = eos_id = bos_id = None
  special_ids: dict = {}

  def __init__(self, chars: str):
    self.chars = chars
    self._index = {c: i for i, c in enumerate(chars)}
    self.vocab_size = len(chars)

  @classmethod
  def train(cls, documents: list[str]) -> CharTokenizer:
    return cls("".join(sorted(set("".join(documents)))))

  def encode(self, text: str) -> list[int]:
    try:
      return [self._index[c] for c in text]
    except KeyError as e:
      raise ValueError(
        f"character {e.args[0]!r} is not in this char-level vocabulary ({self.vocab_size} characters "
        "seen in training); use only characters from the training text"
      ) from None

  def decode(self, ids) -> str:
    return "".join(self.chars[int(i)] for i in ids if 0 <= int(i) < self.vocab_size)

  def to_json(self) -> dict:
    return {"kind": "char", "chars": self.chars}


class SentencePieceTokenizer:
  """A SentencePiece model set up to round-trip text exactly (newlines, runs of spaces)."""

  def __init__(self, model_proto: bytes):
    self.model_proto = model_proto
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self.sp.get_piece_size()
    valid = lambda i: i if i >= 0 else None
    self.pad_id, self.eos_id = valid(self.sp.pad_id()), valid(self.sp.eos_id())
    self.bos_id = valid(self.sp.bos_id())
    # name -> id of every reserved piece: pad/unk/bos/eos, cls/sep/mask, sentinel_0..99.
    self.special_ids = {
      name: i
      for name, i in [
        ("pad", self.pad_id),
        ("unk", self.sp.unk_id()),
        ("bos", self.bos_id),
        ("eos", self.eos_id),
      ]
      if i is not None
    }
    for piece, name in [("[CLS]", "cls"), ("[SEP]", "sep"), ("[MASK]", "mask")]:
      if self.sp.piece_to_id(piece) != self.sp.unk_id():
        self.special_ids[name] = self.sp.piece_to_id(piece)
    for k in range(NUM_SENTINELS):
      i = self.sp.piece_to_id(f"<extra_id_{k}>")
      if i == self.sp.unk_id():
        break
      self.special_ids[f"sentinel_{k}"] = i
    self._silent = {self.special_ids.get(n) for n in ("pad", "bos", "eos", "cls", "sep")}

  @classmethod
  def train(cls, documents: list[str], config: TokenizerConfig) -> SentencePieceTokenizer:
    sentences = _training_lines(documents, config.max_training_chars)  # '\n' is its own piece
    if config.special_tokens not in SPECIAL_TOKENS:
      raise ValueError(
        f"tokenizer.special_tokens={config.special_tokens!r}; choose one of {sorted(SPECIAL_TOKENS)}"
      )
    special = SPECIAL_TOKENS[config.special_tokens]
    exact = not config.special_tokens  # exact round trip; else WordPiece-like whitespace
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences),
      model_writer=model,
      vocab_size=config.vocab_size,
      model_type=config.model_type,
      character_coverage=1.0,
      normalization_rule_name="nmt_nfkc_cf"
      if config.lowercase
      else ("identity" if exact else "nmt_nfkc"),
      remove_extra_whitespaces=not exact,
      allow_whitespace_only_pieces=exact,
      byte_fallback=True,
      add_dummy_prefix=not exact,
      split_digits=True,
      **{**special, "user_defined_symbols": ["\n"] * exact + special["user_defined_symbols"]},
      hard_vocab_limit=False,
      num_threads=2,
      minloglevel=2,
    )
    return cls(model.getvalue())

  def encode(self, text: str) -> list[int]:
    return self.sp.encode(text)

  def decode(self, ids) -> str:
    keep = [int(i) for i in ids if int(i) not in self._silent]
    return self.sp.decode(keep)

  def word_starts(self) -> np.ndarray:
    """(V,) int32: 1 where a piece starts a word ('▁' prefix, or a reserved piece)."""
    sp, reserved = self.sp, ("\n", "[CLS]", "[SEP]", "[MASK]")
    pieces = [sp.id_to_piece(i) for i in range(self.vocab_size)]
    starts = [
      p.startswith("\u2581") or p in reserved or sp.is_control(i) or sp.is_unknown(i)
      for i, p in enumerate(pieces)
    ]
    return np.asarray(starts, np.int32)

  def to_json(self) -> dict:
    return {"kind": "sentencepiece", "model": base64.b64encode(self.model_proto).decode("ascii")}


# WordPiece's reserved tokens, in id order, as (name, token) per special_tokens setting.
WORDPIECE_SPECIALS = {
  "": [("pad", "[PAD]"), ("unk", "[UNK]"), ("bos", "[BOS]"), ("eos", "[EOS]")],
  "bert": [
    ("pad", "[PAD]"),
    ("unk", "[UNK]"),
    ("cls", "[CLS]"),
    ("sep", "[SEP]"),
    ("mask", "[MASK]"),
  ],
  "t5": [("pad", "<pad>"), ("eos", "</s>"), ("unk", "<unk>")]
  + [(f"sentinel_{k}", f"<extra_id_{k}>") for k in range(NUM_SENTINELS)],
}


def _hf_tokenizers():
  try:
    import tokenizers
  except ImportError:
    raise ImportError(
      "tokenizer.kind='wordpiece' uses Hugging Face's `tokenizers` library: "
      "pip install 'flaxlm[wordpiece]' (or pip install tokenizers)"
    ) from None
  return tokenizers


class WordPieceTokenizer:
  """BERT's WordPiece (Hugging Face `tokenizers`): BERT normalization (optionally lowercased,
  accents stripped), split on whitespace and punctuation, then greedy longest-match pieces
  with '##' marking a word's continuation. Round trips are not exact: whitespace becomes
  single spaces and punctuation is re-joined by a heuristic."""

  def __init__(self, serialized: str):
    self.serialized = serialized
    self.tok = _hf_tokenizers().Tokenizer.from_str(serialized)
    self.vocab_size = self.tok.get_vocab_size()
    self.special_ids = {}
    for name, token in (p for specials in WORDPIECE_SPECIALS.values() for p in specials):
      i = self.tok.token_to_id(token)
      if i is not None and name not in self.special_ids:
        self.special_ids[name] = i
    self.pad_id, self.eos_id, self.bos_id = (self.special_ids.get(n) for n in ("pad", "eos", "bos"))
    self._silent = {self.special_ids.get(n) for n in ("pad", "bos", "eos", "cls", "sep")}

  @classmethod
  def train(cls, documents: list[str], config: TokenizerConfig) -> WordPieceTokenizer:
    if config.special_tokens not in WORDPIECE_SPECIALS:
      raise ValueError(
        f"tokenizer.special_tokens={config.special_tokens!r}; choose one of {sorted(WORDPIECE_SPECIALS)}"
      )
    hf = _hf_tokenizers()
    unk = dict(WORDPIECE_SPECIALS[config.special_tokens])["unk"]
    tok = hf.Tokenizer(hf.models.WordPiece(unk_token=unk, max_input_chars_per_word=100))
    tok.normalizer = hf.normalizers.BertNormalizer(lowercase=config.lowercase)
    tok.pre_tokenizer = hf.pre_tokenizers.BertPreTokenizer()
    tok.decoder = hf.decoders.WordPiece()
    trainer = hf.trainers.WordPieceTrainer(
      vocab_size=config.vocab_size,
      special_tokens=[token for _, token in WORDPIECE_SPECIALS[config.special_tokens]],
      show_progress=False,
    )
    tok.train_from_iterator(_training_lines(documents, config.max_training_chars), trainer)
    return cls(tok.to_str())

  def encode(self, text: str) -> list[int]:
    # Words never span lines, so lines encode independently (and in parallel).
    lines = self.tok.encode_batch(text.split("\n"), add_special_tokens=False)
    return [i for line in lines for i in line.ids]

  def decode(self, ids) -> str:
    keep = [int(i) for i in ids if int(i) not in self._silent]
    return self.tok.decode(keep, skip_special_tokens=False)

  def word_starts(self) -> np.ndarray:
    """(V,) int32: 1 where a piece starts a word (no '##' prefix)."""
    starts = np.ones(self.vocab_size, np.int32)
    for piece, i in self.tok.get_vocab().items():
      if piece.startswith("##"):
        starts[i] = 0
    return starts

  def to_json(self) -> dict:
    return {"kind": "wordpiece", "tokenizer": self.serialized}


def _training_lines(documents: list[str], max_chars: int) -> list[str]:
  """The non-empty lines of `documents`, up to about `max_chars` characters."""
  budget, lines = max_chars, []
  for doc in documents:
    for line in doc.split("\n"):
      if budget <= 0:
        return lines
      if line:
        lines.append(line)
      budget -= len(line)
  return lines


def train_tokenizer(config: TokenizerConfig, documents: list[str]):
  if config.kind in ("byte", "char") and (config.special_tokens or config.lowercase):
    raise ValueError(
      "tokenizer.special_tokens / lowercase need tokenizer.kind='sentencepiece' or 'wordpiece' "
      f"(got {config.kind!r})"
    )
  if config.kind == "sentencepiece":
    return SentencePieceTokenizer.train(documents, config)
  if config.kind == "wordpiece":
    return WordPieceTokenizer.train(documents, config)
  if config.kind == "byte":
    return ByteTokenizer()
  if config.kind == "char":
    return CharTokenizer.train(documents)
  raise ValueError(
    f"tokenizer.kind={config.kind!r}; choose 'sentencepiece', 'wordpiece', 'byte' or 'char'"
  )


def tokenizer_from_json(d: dict):
  kind = d.get("kind")
  if kind == "sentencepiece":
    return SentencePieceTokenizer(base64.b64decode(d["model"]))
  if kind == "wordpiece":
    return WordPieceTokenizer(d["tokenizer"])
  if kind == "byte":
    return ByteTokenizer()
  if kind == "char":
    return CharTokenizer(d["chars"])
  raise ValueError(f"saved tokenizer has unknown kind {kind!r}")
