"""A deterministic WordPiece vocabulary trainer.

Hugging Face's `WordPieceTrainer` learns the vocabulary as BPE merges (Sennrich et al. 2016)
over words with '##' marking a continuation, as this does; but it breaks ties between equally
frequent pairs in hash-map order, so two runs on the same text give different vocabularies
(huggingface/tokenizers#1794) and two fresh runs of one config train differently. Here the
words are counted after BERT's own normalizer and pre-tokenizer (from `tokenizers`, so
encoding sees the same words), and ties go to the pair that sorts first: the same text always
gives the same vocabulary. Encoding still runs in Hugging Face's WordPiece model.
"""

from __future__ import annotations

import collections
import heapq

import numpy as np

from flaxlm.data.tokenizers.config import WORDPIECE_SPECIALS, TokenizerConfig, training_lines

CONTINUATION = "##"


def _merged(a: str, b: str) -> str:
  return a + b[len(CONTINUATION) :]


def count_words(lines, normalizer, pre_tokenizer) -> collections.Counter:
  counts = collections.Counter()
  for line in lines:
    text = normalizer.normalize_str(line) if normalizer is not None else line
    counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(text))
  return counts


def train_vocab(
  word_counts: collections.Counter, vocab_size: int, specials: list[str], min_count: int = 2
) -> list[str]:
  """The vocabulary, in id order: `specials`, the alphabet (each character standalone and,
  where it continues a word, as '##c'), then merged pieces in the order they were learned,
  until `vocab_size` pieces or no pair occurs `min_count` times."""
  words = sorted(word_counts.items())  # a fixed order for everything below
  symbols = [[w[0]] + [CONTINUATION + c for c in w[1:]] for w, _ in words]
  counts = [n for _, n in words]
  alphabet = collections.Counter()
  for syms, n in zip(symbols, counts, strict=True):
    for s in syms:
      alphabet[s] += n
    alphabet[syms[0][-1]] += 0  # every character can also start a word
    for s in syms[1:]:
      alphabet[s[len(CONTINUATION) :]] += 0
  vocab = list(specials)
  seen = set(vocab)
  for piece, _ in sorted(alphabet.items(), key=lambda kv: (-kv[1], kv[0])):
    if piece not in seen:
      vocab.append(piece)
      seen.add(piece)

  pair_counts: dict[tuple[str, str], int] = collections.defaultdict(int)
  where: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
  for i, syms in enumerate(symbols):
    for pair in zip(syms, syms[1:], strict=False):
      pair_counts[pair] += counts[i]
      where[pair].add(i)
  # Max-heap on count; ties to the pair that sorts first. Stale entries are skipped on pop.
  heap = [(-n, pair) for pair, n in pair_counts.items()]
  heapq.heapify(heap)

  while len(vocab) < vocab_size and heap:
    neg, pair = heapq.heappop(heap)
    if pair_counts.get(pair, 0) != -neg:
      continue
    if -neg < min_count:
      break
    new = _merged(*pair)
    changed: set[tuple[str, str]] = set()
    for i in sorted(where.pop(pair, ())):
      syms, n = symbols[i], counts[i]
      for old in zip(syms, syms[1:], strict=False):
        pair_counts[old] -= n
        changed.add(old)
      merged, j = [], 0
      while j < len(syms):
        if j + 1 < len(syms) and (syms[j], syms[j + 1]) == pair:
          merged.append(new)
          j += 2
        else:
          merged.append(syms[j])
          j += 1
      symbols[i] = merged
      for p in zip(merged, merged[1:], strict=False):
        pair_counts[p] += n
        where[p].add(i)
        changed.add(p)
    pair_counts.pop(pair, None)
    for p in sorted(changed):
      if pair_counts.get(p, 0) > 0:
        heapq.heappush(heap, (-pair_counts[p], p))
      else:
        pair_counts.pop(p, None)
    if new not in seen:
      vocab.append(new)
      seen.add(new)
  return vocab


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
    hf = _hf_tokenizers()
    normalizer = hf.normalizers.BertNormalizer(lowercase=config.lowercase)
    pre_tokenizer = hf.pre_tokenizers.BertPreTokenizer()
    counts = count_words(
      training_lines(documents, config.max_training_chars), normalizer, pre_tokenizer
    )
    specials = [token for _, token in WORDPIECE_SPECIALS[config.special_tokens]]
    vocab = train_vocab(counts, config.vocab_size, specials)
    unk = dict(WORDPIECE_SPECIALS[config.special_tokens])["unk"]
    tok = hf.Tokenizer(
      hf.models.WordPiece(
        {piece: i for i, piece in enumerate(vocab)}, unk_token=unk, max_input_chars_per_word=100
      )
    )
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.decoder = hf.decoders.WordPiece()
    tok.add_special_tokens(specials)
    return cls(tok.to_str())

  def encode(self, text: str) -> list[int]:
    # Words never span lines, so lines encode independently (and in parallel).
    lines = self.tok.encode_batch(text.split("\n"), add_special_tokens=False)
    return [i for line in lines for i in line.ids]

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and each piece's [start, end) character span in `text`."""
    encoding = self.tok.encode(text, add_special_tokens=False)
    return list(encoding.ids), [tuple(o) for o in encoding.offsets]

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
