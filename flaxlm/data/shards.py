"""Token shards: a tokenized split written once as int32 `.npy` files of at most
`SHARD_TOKENS` tokens with an `index.json`, and read back memory-mapped, so training touches
only the pages of the windows it reads: host memory does not grow with the corpus.

Writing streams the documents: they are cut at newlines into pieces of about `PIECE_CHARS`
characters (every flaxlm tokenizer encodes text split at a newline as the two halves would
encode apart: newlines are pieces of their own, and WordPiece encodes lines independently),
tokenized in worker processes (`multiprocessing`, one per core), and appended in order, with
EOS after each document when the tokenizer has one. Shards are written to a temporary
folder that is renamed into place when complete, so a killed preparation leaves nothing a
later run could mistake for a finished one.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from collections.abc import Iterable, Iterator

import numpy as np

from flaxlm.workdir import as_path

SHARD_TOKENS = 1 << 24  # 16M tokens: 64 MB per shard
PIECE_CHARS = 1 << 20  # text per tokenizing task


def pieces(documents: Iterable[str], piece_chars: int = PIECE_CHARS) -> Iterator[tuple[str, bool]]:
  """(text, ends a document) pieces of about `piece_chars` characters, cut after a newline."""
  for doc in documents:
    start = 0
    while len(doc) - start > piece_chars:
      cut = doc.find("\n", start + piece_chars)
      if cut < 0:
        break
      yield doc[start : cut + 1], False
      start = cut + 1
    yield doc[start:], True


_tokenizer = None  # a worker process's tokenizer


def _start_worker(tokenizer_json: dict) -> None:
  global _tokenizer
  from flaxlm.data.tokenizers import tokenizer_from_json

  _tokenizer = tokenizer_from_json(tokenizer_json)


def _encode(piece: tuple[str, bool]) -> np.ndarray:
  text, last = piece
  ids = _tokenizer.encode(text)
  if last and _tokenizer.eos_id is not None:
    ids = [*ids, _tokenizer.eos_id]
  return np.asarray(ids, np.int32)


def write(documents: Iterable[str], tokenizer, directory, workers: int = 0) -> TokenShards:
  """Tokenizes `documents` (an iterable: they are read as they come) into shards in
  `directory`; `workers` processes (0: one per core) encode in parallel."""
  directory = as_path(directory)
  tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
  if tmp.exists():
    shutil.rmtree(tmp)
  tmp.mkdir(parents=True)
  if not workers:
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
  shards, buffer, buffered = [], [], 0

  def flush():
    nonlocal buffer, buffered
    if not buffer and shards:
      return
    name = f"shard_{len(shards):05d}.npy"
    tokens = np.concatenate(buffer) if buffer else np.zeros(0, np.int32)
    with (tmp / name).open("wb") as f:
      np.save(f, tokens)
    shards.append([name, int(len(tokens))])
    buffer, buffered = [], 0

  if workers > 1:
    # 'spawn': JAX may already hold threads in this process, which fork() would copy.
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(workers, _start_worker, (tokenizer.to_json(),))
    encoded = pool.imap(_encode, pieces(documents), chunksize=1)
  else:
    pool = None
    _start_worker(tokenizer.to_json())
    encoded = map(_encode, pieces(documents))
  try:
    for ids in encoded:
      buffer.append(ids)
      buffered += len(ids)
      if buffered >= SHARD_TOKENS:
        flush()
  finally:
    if pool is not None:
      pool.close()
      pool.join()
  flush()
  (tmp / "index.json").write_text(json.dumps({"shards": shards}))
  if directory.exists():  # a concurrent preparation finished first: keep its copy
    shutil.rmtree(tmp)
  else:
    tmp.rename(directory)
  return TokenShards.open(directory)


class TokenShards:
  """A token stream stored as shards and read lazily: `len()`, `x[i]`, `x[a:b]` (an array,
  concatenated across shard boundaries) and `view(a, b)` (a sub-stream, no copy)."""

  def __init__(self, arrays: list[np.ndarray], start: int = 0, stop: int | None = None):
    self.arrays = arrays
    self.offsets = np.cumsum([0] + [len(a) for a in arrays])
    self.start = start
    self.stop = int(self.offsets[-1]) if stop is None else stop

  @classmethod
  def open(cls, directory) -> TokenShards:
    directory = as_path(directory)
    index = json.loads((directory / "index.json").read_text())
    arrays = [np.load(os.fspath(directory / name), mmap_mode="r") for name, _ in index["shards"]]
    return cls(arrays)

  def __len__(self) -> int:
    return self.stop - self.start

  def view(self, start: int, stop: int) -> TokenShards:
    return TokenShards(self.arrays, self.start + start, self.start + stop)

  def __getitem__(self, key):
    if isinstance(key, slice):
      a, b, step = key.indices(len(self))
      if step != 1:
        raise ValueError("TokenShards supports contiguous slices only")
      return self._read(self.start + a, self.start + max(a, b))
    i = int(key) + (len(self) if int(key) < 0 else 0)
    return self._read(self.start + i, self.start + i + 1)[0]

  def _read(self, a: int, b: int) -> np.ndarray:
    parts = []
    first = int(np.searchsorted(self.offsets, a, side="right")) - 1
    for s in range(max(first, 0), len(self.arrays)):
      lo, hi = self.offsets[s], self.offsets[s + 1]
      if lo >= b:
        break
      parts.append(np.asarray(self.arrays[s][max(a, lo) - lo : min(b, hi) - lo]))
    if not parts:
      return np.zeros(0, np.int32)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]

  def __array__(self, dtype=None, copy=None):
    out = self._read(self.start, self.stop)
    return out.astype(dtype) if dtype is not None else out
