"""Shared test material: text that ships with CPython, a small SentencePiece model trained on
it (cached for the session), and config overrides by dotted key."""

import functools

from flaxlm.data import sources, tokenizers
from flaxlm.data.sentencepiece_tokenizer import SentencePieceTokenizer
from flaxlm.data.tokenizers import TokenizerConfig


@functools.cache
def training_docs() -> tuple[str, ...]:
  """About 50 kB of English prose and code samples that ship with CPython."""
  return tuple(sources.python_docs()[:12])


@functools.cache
def sentencepiece(model_type: str = "bpe") -> SentencePieceTokenizer:
  config = TokenizerConfig(kind="sentencepiece", vocab_size=400, model_type=model_type)
  return tokenizers.train_tokenizer(config, list(training_docs()))


def set_keys(c, overrides: dict):
  """`c` (a ConfigDict) with `overrides` set: 'key' or 'block.key' (e.g. 'task.max_len')."""
  for key, value in overrides.items():
    block, *rest = key.split(".")
    if rest:
      c[block][rest[0]] = value
    else:
      c[key] = value
  return c
