"""Tokenizers: SentencePiece (BPE or unigram, trained here), bytes, or characters.

Each tokenizer serializes to a JSON-able dict that is written to the workdir and into every
checkpoint, so sampling always decodes with the tokenizer the model was trained with.
"""

from __future__ import annotations

import base64
import dataclasses
import io

import sentencepiece as spm


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  kind: str = "sentencepiece"  # sentencepiece | byte | char
  vocab_size: int = 2048  # sentencepiece only
  model_type: str = "bpe"  # bpe | unigram
  max_training_chars: int = 20_000_000


class ByteTokenizer:
  """UTF-8 bytes 0..255, then pad 256, eos 257, bos 258."""

  pad_id, eos_id, bos_id = 256, 257, 258
  vocab_size = 259

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids) -> str:
    return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

  def to_json(self) -> dict:
    return {"kind": "byte"}


class CharTokenizer:
  """One id per character seen in the corpus (nanoGPT's shakespeare_char); no special ids."""

  pad_id = eos_id = bos_id = None

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
    self.pad_id, self.eos_id, self.bos_id = self.sp.pad_id(), self.sp.eos_id(), self.sp.bos_id()

  @classmethod
  def train(cls, documents: list[str], config: TokenizerConfig) -> SentencePieceTokenizer:
    budget, sentences = config.max_training_chars, []
    for doc in documents:  # SentencePiece trains on lines; keep '\n' as a piece of its own
      for line in doc.split("\n"):
        if budget <= 0:
          break
        sentences.append(line)
        budget -= len(line)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
      sentence_iterator=iter(s for s in sentences if s),
      model_writer=model,
      vocab_size=config.vocab_size,
      model_type=config.model_type,
      character_coverage=1.0,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      user_defined_symbols=["\n"],
      allow_whitespace_only_pieces=True,
      byte_fallback=True,
      add_dummy_prefix=False,
      split_digits=True,
      pad_id=0,
      unk_id=1,
      bos_id=2,
      eos_id=3,
      hard_vocab_limit=False,
      num_threads=2,
      minloglevel=2,
    )
    return cls(model.getvalue())

  def encode(self, text: str) -> list[int]:
    return self.sp.encode(text)

  def decode(self, ids) -> str:
    keep = [int(i) for i in ids if int(i) not in (self.pad_id, self.eos_id, self.bos_id)]
    return self.sp.decode(keep)

  def to_json(self) -> dict:
    return {"kind": "sentencepiece", "model": base64.b64encode(self.model_proto).decode("ascii")}


def train_tokenizer(config: TokenizerConfig, documents: list[str]):
  if config.kind == "sentencepiece":
    return SentencePieceTokenizer.train(documents, config)
  if config.kind == "byte":
    return ByteTokenizer()
  if config.kind == "char":
    return CharTokenizer.train(documents)
  raise ValueError(f"tokenizer.kind={config.kind!r}; choose 'sentencepiece', 'byte' or 'char'")


def tokenizer_from_json(d: dict):
  kind = d.get("kind")
  if kind == "sentencepiece":
    return SentencePieceTokenizer(base64.b64decode(d["model"]))
  if kind == "byte":
    return ByteTokenizer()
  if kind == "char":
    return CharTokenizer(d["chars"])
  raise ValueError(f"saved tokenizer has unknown kind {kind!r}")
