"""Token shards: a tokenized split written once as int32 `.npy` files of at most
`SHARD_TOKENS` tokens with an `index.json`, and read back window by window, so host memory
does not grow with the corpus, neither while preparing nor while training.

Writing streams the documents: they are cut at newlines into pieces of about `PIECE_CHARS`
characters, tokenized in worker processes (`multiprocessing`, one per core; at most two
pieces per worker in flight), and appended in order to the open shard file, with EOS after
each document when the tokenizer has one. Cutting at a newline changes no token: newlines are
pieces of their own and WordPiece encodes lines apart (only SentencePiece unigram in exact
mode may order exactly tied pieces, such as the spaces of an indent, otherwise at a cut).
Shards are written to a temporary folder that is renamed into place when complete, so a
killed preparation leaves nothing a later run could mistake for a finished one.

Reading is positional (`os.pread` of the bytes a slice needs), not a memory map: the pages a
map has touched count as the process's memory, tens of bytes of window pulling in 64 KB
(the kernel maps the pages around a fault), and a pickled map carries its whole array,
while Grain hands the dataset to its worker processes pickled (`config.data_workers`).
`TokenShards` pickles as its file names. The folder must be on a local or mounted
filesystem.
"""

from __future__ import annotations

import collections
import io
import json
import multiprocessing
import os
import shutil
from collections.abc import Iterable, Iterator

import numpy as np

from flaxlm.errors import DataError
from flaxlm.workdir import as_path

SHARD_TOKENS = 1 << 24  # 16M tokens: 64 MB per shard
PIECE_CHARS = 1 << 20  # text per tokenizing task
HEADER_BYTES = 128  # an int32 vector's .npy header (numpy pads it to a multiple of 64)


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
  tasks = pieces(documents, PIECE_CHARS)
  if workers > 1:
    # 'spawn': JAX may already hold threads in this process, which fork() would copy.
    with multiprocessing.get_context("spawn").Pool(
      workers, _start_worker, (tokenizer.to_json(),)
    ) as pool:
      shards = _write_shards(_in_order(pool, tasks, 2 * workers), tmp)
  else:
    _start_worker(tokenizer.to_json())
    shards = _write_shards(map(_encode, tasks), tmp)
  (tmp / "index.json").write_text(json.dumps({"shards": shards}))
  if directory.exists():  # a concurrent preparation finished first: keep its copy
    shutil.rmtree(tmp)
  else:
    tmp.rename(directory)
  return TokenShards.open(directory)


def _in_order(pool, tasks: Iterator, window: int) -> Iterator[np.ndarray]:
  """Encoded pieces in task order, at most `window` in flight (Pool.imap would queue every
  finished piece in memory while the writer lags)."""
  pending = collections.deque()
  for task in tasks:
    pending.append(pool.apply_async(_encode, (task,)))
    if len(pending) >= window:
      yield pending.popleft().get()
  while pending:
    yield pending.popleft().get()


def _write_shards(encoded: Iterable[np.ndarray], folder) -> list[list]:
  """Appends each token array to the open shard file as it arrives, starting a new shard
  past `SHARD_TOKENS`; returns the index: [[file name, tokens], ...] (at least one shard)."""
  shards, out = [], None
  for ids in encoded:
    if out is None:
      shards.append([f"shard_{len(shards):05d}.npy", 0])
      out = (folder / shards[-1][0]).open("wb")
      out.write(bytes(HEADER_BYTES))  # the header holds the length: written at the end
    out.write(np.ascontiguousarray(ids, np.int32).tobytes())
    shards[-1][1] += len(ids)
    if shards[-1][1] >= SHARD_TOKENS:
      _finish(out, shards[-1][1])
      out = None
  if not shards:  # no tokens: one empty shard
    shards.append([f"shard_{len(shards):05d}.npy", 0])
    out = (folder / shards[-1][0]).open("wb")
  if out is not None:
    _finish(out, shards[-1][1])
  return shards


def _finish(out, tokens: int) -> None:
  header = io.BytesIO()
  shape = {"descr": np.dtype(np.int32).str, "fortran_order": False, "shape": (tokens,)}
  np.lib.format.write_array_header_1_0(header, shape)
  assert len(header.getvalue()) == HEADER_BYTES
  out.seek(0)
  out.write(header.getvalue())
  out.close()


class TokenShards:
  """A token stream stored as shards and read on demand: `len()`, `x[i]`, `x[a:b]` (an int32
  array, concatenated across shard boundaries) and `view(a, b)` (a sub-stream, no copy)."""

  def __init__(self, files: list[tuple[str, int, int]], start: int = 0, stop: int | None = None):
    self.files = files  # (path, byte offset of the data, tokens) per shard
    self.offsets = np.cumsum([0] + [tokens for _, _, tokens in files])
    self.start = start
    self.stop = int(self.offsets[-1]) if stop is None else stop
    self._fds = {}  # shard -> file descriptor, opened on first read in each process

  @classmethod
  def open(cls, directory) -> TokenShards:
    directory = as_path(directory)
    index = json.loads((directory / "index.json").read_text())
    files = []
    for name, tokens in index["shards"]:
      path = os.fspath(directory / name)
      with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_{version[1]}")
        shape, _, dtype = read_header(f)
        if shape != (tokens,) or dtype != np.dtype("<i4"):
          raise DataError(
            f"{path} holds {dtype} {shape}, not the {tokens} int32 tokens of its index"
          )
        files.append((path, f.tell(), tokens))
    return cls(files)

  def __len__(self) -> int:
    return self.stop - self.start

  def view(self, start: int, stop: int) -> TokenShards:
    return TokenShards(self.files, self.start + start, self.start + stop)

  def __getitem__(self, key):
    if isinstance(key, slice):
      a, b, step = key.indices(len(self))
      if step != 1:
        raise ValueError("TokenShards supports contiguous slices only")
      return self._read(self.start + a, self.start + max(a, b))
    i = int(key) + (len(self) if int(key) < 0 else 0)
    if not 0 <= i < len(self):
      raise IndexError(f"token {key} of a stream of {len(self)}")
    return self._read(self.start + i, self.start + i + 1)[0]

  def _read(self, a: int, b: int) -> np.ndarray:
    parts = []
    first = int(np.searchsorted(self.offsets, a, side="right")) - 1
    for s in range(max(first, 0), len(self.files)):
      lo, hi = int(self.offsets[s]), int(self.offsets[s + 1])
      if lo >= b:
        break
      if min(b, hi) > max(a, lo):
        parts.append(self._pread(s, max(a, lo) - lo, min(b, hi) - lo))
    if not parts:
      return np.zeros(0, np.int32)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]

  def _pread(self, shard: int, i: int, j: int) -> np.ndarray:
    """Tokens [i, j) of one shard."""
    path, offset, _ = self.files[shard]
    fd = self._fds.get(shard)
    if fd is None:  # two loader threads may race here: keep one descriptor
      fd = os.open(path, os.O_RDONLY)
      if self._fds.setdefault(shard, fd) != fd:
        os.close(fd)
        fd = self._fds[shard]
    data = os.pread(fd, (j - i) * 4, offset + i * 4)
    if len(data) != (j - i) * 4:
      raise DataError(
        f"{path} is shorter than its index says; delete the corpus cache to rebuild it"
      )
    return np.frombuffer(data, "<i4")

  def __array__(self, dtype=None, copy=None):
    out = self._read(self.start, self.stop)
    return out.astype(dtype) if dtype is not None else out

  def __getstate__(self) -> dict:
    return {**self.__dict__, "_fds": {}}  # descriptors belong to this process

  def __del__(self, close=os.close):  # `close` bound now: at exit `os` may be gone
    for fd in self._fds.values():
      close(fd)
