"""Text sources, every one a TFDS dataset read through `tfds.data_source` (ArrayRecord).

`config.dataset` names the source (see `flaxlm.data.spec` for the strings); local files are
built into a TFDS dataset on first use.

Records are {'text': bytes, 'index': int} (pairs: 'source' and 'target'); `index` keeps
document order, which ArrayRecord shuffles at write time. One local file is one document.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from flaxlm.data import spec as specs
from flaxlm.data.catalog import check_features, tfds_builder
from flaxlm.errors import ConfigError, DataError


def python_docs() -> list[str]:
  """The English reference topics that ship with CPython, in a fixed order (~0.8 MB)."""
  from pydoc_data import topics

  return [topics.topics[k] for k in sorted(topics.topics)]


class LocalText(tfds.core.GeneratorBasedBuilder):
  """A TFDS builder over records of text fields (an iterable, read once while the dataset is
  built); its config name fingerprints the input."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, records: Iterable[dict] = (), fields=("text",), **kwargs):
    self._records, self._fields = records, tuple(fields)
    super().__init__(**kwargs)

  def _info(self):
    features = {f: tfds.features.Text() for f in self._fields}
    features = tfds.features.FeaturesDict({**features, "index": np.int64})
    return tfds.core.DatasetInfo(builder=self, features=features)

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, record in enumerate(self._records):
      yield i, {**record, "index": i}


@dataclasses.dataclass(frozen=True)
class TextSource:
  """Documents (or source/target pairs) of one source, by split, in their original order."""

  spec: str
  splits: dict  # split name -> data source of {'text', 'index'} (pairs: two text fields)
  text_feature: str = "text"  # 'a,b': a pair source with fields a (source) and b (target)

  @property
  def is_pairs(self) -> bool:
    return "," in self.text_feature

  def _order(self, split: str) -> np.ndarray:
    """Record positions in document order (ArrayRecord shuffles local sources at write time;
    their `index` field restores the order; catalog datasets keep theirs)."""
    src = self.splits[split]
    if not len(src) or "index" not in src[0]:
      return np.arange(len(src))
    index = np.fromiter((int(src[i]["index"]) for i in range(len(src))), np.int64, len(src))
    return np.argsort(index, kind="stable")

  def _records(self, split: str) -> list[dict]:
    src = self.splits[split]
    return [src[int(i)] for i in self._order(split)]

  def iter_documents(self, split: str) -> Iterator[str]:
    """The documents of a split in order, read one at a time (a corpus need not fit in RAM)."""
    if self.is_pairs:
      raise ConfigError(
        f"dataset {self.spec!r} holds source/target pairs; it trains the encoder-decoder "
        "objective 'seq2seq' (--config.objective=seq2seq --config.model_family=encdec)"
      )
    src = self.splits[split]
    for i in self._order(split):
      yield _as_str(src[int(i)][self.text_feature])

  def documents(self, split: str) -> list[str]:
    return list(self.iter_documents(split))

  def pairs(self, split: str) -> list[tuple[str, str]]:
    if not self.is_pairs:
      raise ConfigError(
        f"the 'seq2seq' objective needs parallel text, e.g. --config.dataset=pairs:train.en,train.de"
        f" or a TFDS translation dataset with --config.text_feature=en,de (got {self.spec!r})"
      )
    a, b = self.text_feature.split(",")
    return [(_as_str(r[a]), _as_str(r[b])) for r in self._records(split)]


def _as_str(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _local_builder(name: str, records: Iterable[dict], data_dir: str, fields=("text",)):
  def make():
    return LocalText(
      records=records,
      fields=fields,
      data_dir=data_dir,
      config=tfds.core.BuilderConfig(name=name),
      file_format="array_record",
    )

  # Our log line already names this build; TFDS's progress bars would wrap the one-line
  # error of a malformed file (file:line) in bar residue. Restored after, for callers' builds.
  bars_were_on = getattr(tfds.core.utils.tqdm_utils, "_active", True)
  tfds.display_progress_bar(False)
  try:
    with _one_builder_at_a_time(data_dir, name):
      builder = make()
      try:
        builder.download_and_prepare()
      except FileExistsError:  # another host sharing data_dir (no file locks there) finished
        builder = make()
  finally:
    tfds.display_progress_bar(bars_were_on)
  return builder.as_data_source(split="train")


@contextlib.contextmanager
def _one_builder_at_a_time(data_dir: str, name: str):
  """Processes sharing a local data_dir build dataset `name` one at a time; the others wait,
  then find it built. Without the lock, a process that opens the builder while another is
  still writing it sees a dataset with no splits and fails (seen with two train.py runs
  started together). Object stores have no file locks: TFDS's FileExistsError covers them, as
  it does a build this process starts while it holds the lock (reentrant, not a deadlock)."""
  path = os.path.join(data_dir, f".{name}.lock")
  if "://" in data_dir or path in _LOCKS_HELD:
    yield
    return
  os.makedirs(data_dir, exist_ok=True)
  with open(path, "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    _LOCKS_HELD.add(path)
    try:
      yield
    finally:
      _LOCKS_HELD.discard(path)
      fcntl.flock(lock, fcntl.LOCK_UN)


_LOCKS_HELD: set[str] = set()  # this process's builder locks (`_one_builder_at_a_time`)


def _read_files(pattern: str) -> tuple[list[str], Iterator[str]]:
  """The files of `pattern` and their texts, each read when the iterator reaches it: building
  the TFDS dataset holds one file at a time, and a built one is not read again."""
  paths = specs.local_files(pattern)
  return paths, map(_read_text, paths)


def _read_text(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except UnicodeDecodeError as e:
    line = open(path, "rb").read()[: e.start].count(b"\n") + 1
    raise DataError(
      f"{path}:{line} is not UTF-8 text (byte {e.start}: {e.reason}); convert it, "
      f"e.g. iconv -f latin1 -t utf-8 {path}"
    ) from None


def open_source(spec: str, data_dir: str, text_feature: str = "text") -> TextSource:
  """Opens (building on first use) the TFDS dataset behind a `config.dataset` string."""
  kind, arg = specs.parse(spec)
  if kind == "builtin":
    docs = [{"text": d} for d in python_docs()]
    return TextSource(spec, {"train": _local_builder("python_docs", docs, data_dir)})
  if kind == "text":
    paths, docs = _read_files(arg)
    name = _files_fingerprint("t", paths)
    records = ({"text": d} for d in docs)
    return TextSource(spec, {"train": _local_builder(name, records, data_dir)})
  if kind == "pairs":
    specs.check(spec, "text")
    paths, docs = _read_files(arg)
    records = _aligned_lines(paths, docs)
    name = _files_fingerprint("p", paths)
    fields = ("source", "target")
    return TextSource(
      spec, {"train": _local_builder(name, records, data_dir, fields)}, "source,target"
    )
  if kind in specs.RECORD_FILES:
    return _record_field_source(spec, data_dir, text_feature)
  name, _, split = arg.partition(":")
  builder = tfds_builder(name, data_dir)
  check_features(spec, builder, text_feature)
  builder.download_and_prepare()
  available = set(builder.info.splits)
  if split and split.split("[")[0] not in available:
    raise ConfigError(f"config.dataset={spec!r}: no split {split!r}; it has {sorted(available)}")
  splits = {"train": builder.as_data_source(split=split or "train")}
  for held_out in ("validation", "test"):
    if held_out in available and held_out != (split or "train"):
      splits["validation"] = builder.as_data_source(split=held_out)
      break
  return TextSource(spec, splits, text_feature)


def _record_field_source(spec: str, data_dir: str, text_feature: str) -> TextSource:
  """A field (or two, for pairs) of every record of a jsonl/tsv/csv file, as documents."""
  from flaxlm.data import formats

  records = formats.read(spec, key="dataset")
  names = text_feature.split(",")
  docs = [{n: str(formats.field(r, n, "text_feature")) for n in names} for r in records]
  paths = specs.local_files(spec.partition(":")[2])
  fields = ("source", "target") if len(names) == 2 else ("text",)
  renamed = [dict(zip(fields, (d[n] for n in names), strict=True)) for d in docs]
  name = (
    _files_fingerprint("r", paths) + "_" + hashlib.sha256(text_feature.encode()).hexdigest()[:8]
  )
  builder = _local_builder(name, renamed, data_dir, fields)
  return TextSource(spec, {"train": builder}, "source,target" if len(names) == 2 else "text")


def _files_fingerprint(prefix: str, paths: list[str]) -> str:
  stamp = [(os.path.abspath(p), os.path.getsize(p), os.stat(p).st_mtime_ns) for p in paths]
  return prefix + hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]


def _aligned_lines(paths: list[str], docs: list[str]) -> list[dict]:
  """Line i of the source file with line i of the target; pairs with an empty side dropped."""
  source, target = (d.rstrip("\n").split("\n") for d in docs)
  if len(source) != len(target):
    raise DataError(
      f"{paths[0]} has {len(source)} lines but {paths[1]} has {len(target)}; parallel files "
      "must align line by line"
    )
  return [
    {"source": s.strip(), "target": t.strip()}
    for s, t in zip(source, target, strict=True)
    if s.strip() and t.strip()
  ]
