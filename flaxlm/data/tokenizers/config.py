"""What a tokenizer is before it is trained: its config, the special tokens each setting
reserves, and the training text it reads. The trainers (tokenizers.py, sentencepiece_tokenizer.py,
wordpiece.py) and the config checks all read these; none of them imports a trainer."""

from __future__ import annotations

import dataclasses

from flaxlm.errors import ConfigError

BYTE_SPECIALS = {"pad": 256, "eos": 257, "bos": 258}  # ids after the 256 byte values
KINDS = ("sentencepiece", "wordpiece", "byte", "char", "word")


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  kind: str = "sentencepiece"  # sentencepiece | wordpiece | byte | char | word
  vocab_size: int = 2048  # sentencepiece and wordpiece; word: at most this many words
  model_type: str = "bpe"  # bpe | unigram
  max_training_chars: int = 20_000_000
  special_tokens: str = ""  # '' (pad/unk/bos/eos) | 'bert' | 't5': see SPECIAL_TOKENS
  lowercase: bool = False  # case-fold while tokenizing (uncased BERT); breaks exact round trips
  min_count: int = 1  # word: keep words seen at least this often in training

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ConfigError(f"tokenizer.kind={self.kind!r}; choose one of {KINDS}")
    if self.special_tokens not in SPECIAL_TOKENS:
      raise ConfigError(
        f"tokenizer.special_tokens={self.special_tokens!r}; choose one of {sorted(SPECIAL_TOKENS)}"
      )
    if self.model_type not in ("bpe", "unigram"):
      raise ConfigError(f"tokenizer.model_type={self.model_type!r}; choose 'bpe' or 'unigram'")
    if self.kind in ("byte", "char") and (self.special_tokens or self.lowercase):
      raise ConfigError(
        "tokenizer.special_tokens / lowercase need tokenizer.kind 'sentencepiece', 'wordpiece' "
        f"or 'word' (got {self.kind!r})"
      )
    if self.kind in ("sentencepiece", "wordpiece", "word") and self.vocab_size < 16:
      raise ConfigError(f"tokenizer.vocab_size={self.vocab_size} is too small; use 16 or more")


def reserved_names(config: TokenizerConfig) -> set[str]:
  """The special ids ('pad', 'eos', 'mask', 'sentinel_0', ...) a tokenizer of this config has,
  known before it is trained (objectives and tasks check what they need against it)."""
  if config.kind == "byte":
    return set(BYTE_SPECIALS)
  if config.kind == "char":
    return set()
  if config.kind == "sentencepiece":
    layout = SPECIAL_TOKENS[config.special_tokens]
    names = {n[: -len("_id")] for n, i in layout.items() if n.endswith("_id") and i >= 0}
    pieces = {"[CLS]": "cls", "[SEP]": "sep", "[MASK]": "mask"}
    names |= {pieces[p] for p in layout["user_defined_symbols"] if p in pieces}
    return names | {f"sentinel_{k}" for k in range(NUM_SENTINELS) if config.special_tokens == "t5"}
  return {name for name, _ in WORDPIECE_SPECIALS[config.special_tokens]}


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


def training_lines(documents: list[str], max_chars: int) -> list[str]:
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
