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
    budget, sentences = config.max_training_chars, []
    for doc in documents:  # SentencePiece trains on lines; '\n' is a piece of its own
      for line in doc.split("\n"):
        if budget <= 0:
          break
        sentences.append(line)
        budget -= len(line)
    if config.special_tokens not in SPECIAL_TOKENS:
      raise ValueError(
        f"tokenizer.special_tokens={config.special_tokens!r}; choose one of {sorted(SPECIAL_TOKENS)}"
      )
    special = SPECIAL_TOKENS[config.special_tokens]
    exact = not config.special_tokens  # exact round trip; else WordPiece-like whitespace
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
      sentence_iterator=iter(s for s in sentences if s),
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

  def to_json(self) -> dict:
    return {"kind": "sentencepiece", "model": base64.b64encode(self.model_proto).decode("ascii")}


def train_tokenizer(config: TokenizerConfig, documents: list[str]):
  if config.kind != "sentencepiece" and (config.special_tokens or config.lowercase):
    raise ValueError(
      f"tokenizer.special_tokens / lowercase need tokenizer.kind='sentencepiece' (got {config.kind!r})"
    )
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
