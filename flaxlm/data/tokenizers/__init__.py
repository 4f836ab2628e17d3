"""Tokenizers: SentencePiece (BPE or unigram) or BERT's WordPiece, trained here; bytes;
characters; whole words (the LSTM baseline's).

Each tokenizer serializes to a JSON-able dict that is written to the workdir and into every
checkpoint, so sampling always decodes with the tokenizer the model was trained with. Every
trainer is deterministic: the same text gives the same vocabulary (and the same run).
"""

from __future__ import annotations

import base64
import collections
import re
from collections.abc import Iterable

import numpy as np

from flaxlm.data.tokenizers.config import (  # noqa: F401  (re-exported: they were defined here)
  BYTE_SPECIALS,
  KINDS,
  NUM_SENTINELS,
  SPECIAL_TOKENS,
  WORDPIECE_SPECIALS,
  TokenizerConfig,
  reserved_names,
  training_lines,
)
from flaxlm.errors import ConfigError


class ByteTokenizer:
  """UTF-8 bytes 0..255, then pad 256, eos 257, bos 258."""

  pad_id, eos_id, bos_id = 256, 257, 258
  vocab_size = 259
  special_ids = BYTE_SPECIALS

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and the character each byte belongs to, as [start, end) spans."""
    ids, spans = [], []
    for i, ch in enumerate(text):
      b = ch.encode("utf-8")
      ids += list(b)
      spans += [(i, i + 1)] * len(b)
    return ids, spans

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
  def train(cls, documents: Iterable[str]) -> CharTokenizer:
    chars = set()
    for doc in documents:  # one at a time: the corpus need not fit in memory
      chars.update(doc)
    return cls("".join(sorted(chars)))

  def encode(self, text: str) -> list[int]:
    try:
      return [self._index[c] for c in text]
    except KeyError as e:
      raise ConfigError(
        f"character {e.args[0]!r} is not in this char-level vocabulary ({self.vocab_size} characters "
        "seen in training); use only characters from the training text"
      ) from None

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    return self.encode(text), [(i, i + 1) for i in range(len(text))]

  def decode(self, ids) -> str:
    return "".join(self.chars[int(i)] for i in ids if 0 <= int(i) < self.vocab_size)

  def to_json(self) -> dict:
    return {"kind": "char", "chars": self.chars}


class WordTokenizer:
  """Whole words (the LSTM baseline's): runs of letters and digits, single punctuation
  marks and, as BERT's basic tokenizer does, single CJK characters; optionally lowercased;
  the `vocab_size` most frequent training words seen at least
  `min_count` times, the rest [UNK]. Keeps a character vocabulary too, so a model can look at
  the spelling of every word, [UNK]s included."""

  CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # ideographs: each its own word
  PATTERN = re.compile(f"[{CJK}]|[^\\W{CJK}]+|[^\\w\\s]")

  def __init__(self, words: list[str], chars: str, lowercase: bool, special_tokens: str):
    self.words, self.chars, self.lowercase = words, chars, lowercase
    self.special_tokens = special_tokens
    specials = WORDPIECE_SPECIALS[special_tokens]
    self.special_ids = {name: i for i, (name, _) in enumerate(specials)}
    self._index = {w: i for i, w in enumerate([t for _, t in specials] + words)}
    self._chars = {c: i + 2 for i, c in enumerate(chars)}  # 0: padding, 1: unknown character
    self.vocab_size = len(self._index)
    self.pad_id, self.eos_id, self.bos_id = (self.special_ids.get(n) for n in ("pad", "eos", "bos"))
    self.unk_id = self.special_ids["unk"]
    self._silent = {self.special_ids.get(n) for n in ("pad", "bos", "eos", "cls", "sep")}

  @classmethod
  def train(cls, documents: list[str], config: TokenizerConfig) -> WordTokenizer:
    counts, chars = collections.Counter(), collections.Counter()
    for line in training_lines(documents, config.max_training_chars):
      found = cls.PATTERN.findall(line)
      chars.update("".join(found))
      counts.update(w.lower() for w in found) if config.lowercase else counts.update(found)
    reserved = len(WORDPIECE_SPECIALS[config.special_tokens])
    ranked = sorted(
      (w for w, n in counts.items() if n >= config.min_count), key=lambda w: (-counts[w], w)
    )
    return cls(
      ranked[: max(config.vocab_size - reserved, 0)],
      "".join(sorted(chars)),
      config.lowercase,
      config.special_tokens,
    )

  def split(self, text: str) -> list[str]:
    """The words of `text` as written (before lowercasing)."""
    return self.PATTERN.findall(text)

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    found = list(self.PATTERN.finditer(text))
    return self.encode_words([m.group() for m in found]), [m.span() for m in found]

  def encode(self, text: str) -> list[int]:
    return self.encode_words(self.split(text))

  def encode_words(self, words: list[str]) -> list[int]:
    fold = str.lower if self.lowercase else str
    return [self._index.get(fold(w), self.unk_id) for w in words]

  def char_ids(self, words: list[str], max_chars: int) -> np.ndarray:
    """(len(words), max_chars) int32 character ids of each word (0 pads, 1 unknown)."""
    out = np.zeros((len(words), max_chars), np.int32)
    for i, w in enumerate(words):
      ids = [self._chars.get(c, 1) for c in w[:max_chars]]
      out[i, : len(ids)] = ids
    return out

  @property
  def num_chars(self) -> int:
    return len(self.chars) + 2

  def decode(self, ids) -> str:
    table = list(self._index)
    return " ".join(table[int(i)] for i in ids if int(i) not in self._silent)

  def to_json(self) -> dict:
    return {
      "kind": "word",
      "words": self.words,
      "chars": self.chars,
      "lowercase": self.lowercase,
      "special_tokens": self.special_tokens,
    }


def train_tokenizer(config: TokenizerConfig, documents: list[str]):
  """A tokenizer of `config.kind` trained on `documents` (deterministic)."""
  from flaxlm.data.tokenizers.sentencepiece import SentencePieceTokenizer
  from flaxlm.data.tokenizers.wordpiece import WordPieceTokenizer

  trainers = {
    "sentencepiece": lambda: SentencePieceTokenizer.train(documents, config),
    "wordpiece": lambda: WordPieceTokenizer.train(documents, config),
    "byte": ByteTokenizer,
    "char": lambda: CharTokenizer.train(documents),
    "word": lambda: WordTokenizer.train(documents, config),
  }
  return trainers[config.kind]()


def tokenizer_from_json(d: dict):
  from flaxlm.data.tokenizers.sentencepiece import SentencePieceTokenizer
  from flaxlm.data.tokenizers.wordpiece import WordPieceTokenizer

  kind = d.get("kind")
  if kind == "sentencepiece":
    return SentencePieceTokenizer(base64.b64decode(d["model"]))
  if kind == "wordpiece":
    return WordPieceTokenizer(d["tokenizer"])
  if kind == "byte":
    return ByteTokenizer()
  if kind == "char":
    return CharTokenizer(d["chars"])
  if kind == "word":
    return WordTokenizer(d["words"], d["chars"], d["lowercase"], d["special_tokens"])
  if kind == "hf":  # a Hugging Face checkpoint's tokenizer (flaxlm.convert)
    from flaxlm.data.tokenizers.hf import HFTokenizer

    return HFTokenizer.from_json(d)
  raise ValueError(f"saved tokenizer has unknown kind {kind!r}")
