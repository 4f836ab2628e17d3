"""SentencePiece tokenizers (Kudo & Richardson 2018), BPE or unigram, trained here and set up
to round-trip text exactly (newlines and runs of spaces are pieces) unless a model family's
reserved tokens ask for WordPiece-like whitespace ('bert', 't5')."""

from __future__ import annotations

import base64
import io
import re

import numpy as np

from flaxlm.data.tokenizers.config import (
  NUM_SENTINELS,
  SPECIAL_TOKENS,
  TokenizerConfig,
  training_lines,
)
from flaxlm.errors import ConfigError


class SentencePieceTokenizer:
  """A SentencePiece model set up to round-trip text exactly (newlines, runs of spaces)."""

  def __init__(self, model_proto: bytes):
    import sentencepiece as spm

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
    import sentencepiece as spm

    sentences = training_lines(documents, config.max_training_chars)  # '\n' is its own piece
    special = SPECIAL_TOKENS[config.special_tokens]
    exact = not config.special_tokens  # exact round trip; else WordPiece-like whitespace
    model = io.BytesIO()
    try:
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
    except RuntimeError as e:  # e.g. fewer pieces than the text's characters + reserved ones
      need = re.search(r"\. (\d+) vs (\d+)", str(e))
      detail = f" (the text and reserved tokens need {need.group(2)})" if need else ""
      raise ConfigError(
        f"tokenizer.vocab_size={config.vocab_size} is too small for SentencePiece{detail}; "
        f"raise --config.tokenizer.vocab_size ({str(e).splitlines()[0][:120]})"
      ) from None
    return cls(model.getvalue())

  def encode(self, text: str) -> list[int]:
    return self.sp.encode(text)

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and each piece's [start, end) character span in `text` (SentencePiece reports
    UTF-8 byte spans of the original text, mapped here to characters)."""
    proto = self.sp.encode(text, return_type="proto")
    char_at = byte_to_char(text)
    spans = [(char_at[p.begin], char_at[p.end]) for p in proto.pieces]
    return [p.id for p in proto.pieces], spans

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


def byte_to_char(text: str) -> list[int]:
  """For each UTF-8 byte offset of `text` (and its end), the character it falls in."""
  out = []
  for i, ch in enumerate(text):
    out += [i] * len(ch.encode("utf-8"))
  return out + [len(text)]
