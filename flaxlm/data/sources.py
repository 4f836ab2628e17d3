"""Text sources, every one a TFDS dataset read through `tfds.data_source` (ArrayRecord).

`config.dataset` names the source:
  builtin:python-docs        the CPython reference text in `pydoc_data.topics` (no download)
  text:<path-or-glob>[,...]  local UTF-8 files; built into a TFDS dataset on first use
  tfds:<name>[:split]        any TFDS catalog dataset with a text feature
  pairs:<source>,<target>    parallel text: line i of one file translates line i of the other
  tfds:<name> + text_feature='en,de'   a TFDS translation dataset as (source, target) pairs

Records are {'text': bytes, 'index': int} (pairs: 'source' and 'target'); `index` keeps
document order, which ArrayRecord shuffles at write time. One local file is one document.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os

import numpy as np
import tensorflow_datasets as tfds

DEFAULT_DATASET = "builtin:python-docs"


def python_docs() -> list[str]:
  """The English reference topics that ship with CPython, in a fixed order (~0.8 MB)."""
  from pydoc_data import topics

  return [topics.topics[k] for k in sorted(topics.topics)]


class LocalText(tfds.core.GeneratorBasedBuilder):
  """A TFDS builder over in-memory records of text fields; its config name fingerprints the
  input."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, records: list[dict] | None = None, fields=("text",), **kwargs):
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

  def _records(self, split: str) -> list[dict]:
    src = self.splits[split]
    records = [src[i] for i in range(len(src))]
    if records and "index" in records[0]:
      records.sort(key=lambda r: int(r["index"]))
    return records

  def documents(self, split: str) -> list[str]:
    if self.is_pairs:
      raise ValueError(
        f"dataset {self.spec!r} holds source/target pairs; it trains the encoder-decoder "
        "objective 'seq2seq' (--config.objective=seq2seq --config.model_family=encdec)"
      )
    return [_as_str(r[self.text_feature]) for r in self._records(split)]

  def pairs(self, split: str) -> list[tuple[str, str]]:
    if not self.is_pairs:
      raise ValueError(
        f"the 'seq2seq' objective needs parallel text, e.g. --config.dataset=pairs:train.en,train.de"
        f" or a TFDS translation dataset with --config.text_feature=en,de (got {self.spec!r})"
      )
    a, b = self.text_feature.split(",")
    return [(_as_str(r[a]), _as_str(r[b])) for r in self._records(split)]

  def fingerprint(self) -> str:
    return hashlib.sha256(self.spec.encode()).hexdigest()[:16]


def _as_str(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _local_builder(name: str, records: list[dict], data_dir: str, fields=("text",)):
  def make():
    return LocalText(
      records=records,
      fields=fields,
      data_dir=data_dir,
      config=tfds.core.BuilderConfig(name=name),
      file_format="array_record",
    )

  builder = make()
  try:
    builder.download_and_prepare()
  except FileExistsError:  # another process sharing data_dir (multi-process run) finished first
    builder = make()
  return builder.as_data_source(split="train")


def _read_files(pattern: str) -> tuple[list[str], list[str]]:
  paths = []
  for part in pattern.split(","):
    matches = sorted(glob.glob(os.path.expanduser(part)))
    if not matches:
      raise FileNotFoundError(
        f"dataset 'text:{pattern}': no file matches {part!r} (from {os.getcwd()}). "
        "Pass an existing path or glob, e.g. --config.dataset=text:data/*.txt"
      )
    paths += matches
  docs = []
  for p in paths:
    try:
      with open(p, encoding="utf-8") as f:
        docs.append(f.read())
    except UnicodeDecodeError as e:
      raise ValueError(f"{p} is not UTF-8 text ({e}); convert it, e.g. iconv -t utf-8") from e
  return paths, docs


def open_source(spec: str, data_dir: str, text_feature: str = "text") -> TextSource:
  """Opens (building on first use) the TFDS dataset behind a `config.dataset` string."""
  kind, _, arg = spec.partition(":")
  if kind == "builtin":
    if arg != "python-docs":
      raise ValueError(f"unknown builtin dataset {arg!r}; the builtin is 'builtin:python-docs'")
    docs = [{"text": d} for d in python_docs()]
    return TextSource(spec, {"train": _local_builder("python_docs", docs, data_dir)})
  if kind == "text":
    paths, docs = _read_files(arg)
    name = _files_fingerprint("t", paths)
    records = [{"text": d} for d in docs]
    return TextSource(spec, {"train": _local_builder(name, records, data_dir)})
  if kind == "pairs":
    paths, docs = _read_files(arg)
    if len(paths) != 2:
      raise ValueError(
        f"dataset {spec!r}: 'pairs:' takes exactly two files, source then target "
        f"(matched {len(paths)}: {paths})"
      )
    records = _aligned_lines(paths, docs)
    name = _files_fingerprint("p", paths)
    fields = ("source", "target")
    return TextSource(
      spec, {"train": _local_builder(name, records, data_dir, fields)}, "source,target"
    )
  if kind == "tfds":
    name, _, split = arg.partition(":")
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    available = set(builder.info.splits)
    splits = {"train": builder.as_data_source(split=split or "train")}
    for held_out in ("validation", "test"):
      if held_out in available and held_out != (split or "train"):
        splits["validation"] = builder.as_data_source(split=held_out)
        break
    return TextSource(spec, splits, text_feature)
  raise ValueError(
    f"config.dataset={spec!r}: use 'builtin:python-docs', 'text:<path-or-glob>', "
    "'pairs:<source-file>,<target-file>' or 'tfds:<name>[:split]'"
  )


def _files_fingerprint(prefix: str, paths: list[str]) -> str:
  stamp = [(os.path.abspath(p), os.path.getsize(p), int(os.path.getmtime(p))) for p in paths]
  return prefix + hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]


def _aligned_lines(paths: list[str], docs: list[str]) -> list[dict]:
  """Line i of the source file with line i of the target; pairs with an empty side dropped."""
  source, target = (d.rstrip("\n").split("\n") for d in docs)
  if len(source) != len(target):
    raise ValueError(
      f"{paths[0]} has {len(source)} lines but {paths[1]} has {len(target)}; parallel files "
      "must align line by line"
    )
  return [
    {"source": s.strip(), "target": t.strip()}
    for s, t in zip(source, target, strict=True)
    if s.strip() and t.strip()
  ]
