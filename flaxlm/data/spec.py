"""Dataset strings: what `config.dataset` may say, checked before anything is read.

  builtin:python-docs        the CPython reference text in `pydoc_data.topics` (no download)
  text:<path-or-glob>[,...]  local UTF-8 files, one document each
  pairs:<source>,<target>    parallel text: line i of one file translates line i of the other
  tfds:<name>[:split]        a TFDS catalog dataset with a text feature (`text_feature`;
                             'en,de' reads a translation dataset as pairs)
  jsonl:<path> | tsv:<path> | csv:<path>   a field of labelled records (`text_feature`,
                             e.g. 'dialogue'; 'a,b' reads fields a and b as pairs)

This module imports no data library: configs are validated with it before TFDS or Grain load.
"""

from __future__ import annotations

import dataclasses
import glob
import os

from flaxlm.errors import ConfigError, DataNotFoundError

DEFAULT_DATASET = "builtin:python-docs"
SCHEMES = ("builtin", "text", "pairs", "tfds", "jsonl", "tsv", "csv")
RECORD_FILES = ("jsonl", "tsv", "csv")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  dataset: str = DEFAULT_DATASET
  data_dir: str = ""  # TFDS cache; '' = ~/.cache/flaxlm/tfds
  text_feature: str = "text"
  seq_len: int = 128
  window_stride: int = 0  # 0 = seq_len (packed, no overlap)
  val_fraction: float = 0.1  # tail of the token stream held out when the source has no split
  eval_dataset: str = ""  # a separate dataset string for validation ('' = held-out split)
  target_len: int = 0  # encoder-decoder: decoder tokens per row (0 = seq_len)
  pairs_per_example: int = 1  # parallel text: pairs packed per row
  seed: int = 0


def tfds_dir(config: DataConfig) -> str:
  return config.data_dir or os.path.expanduser("~/.cache/flaxlm/tfds")


def parse(spec: str, key: str = "dataset") -> tuple[str, str]:
  """(scheme, argument) of a dataset string, or a ConfigError naming `config.<key>`."""
  scheme, sep, arg = spec.partition(":")
  if not sep or scheme not in SCHEMES or not arg:
    raise ConfigError(
      f"config.{key}={spec!r}: use 'builtin:python-docs', 'text:<path-or-glob>', "
      "'pairs:<source-file>,<target-file>', 'tfds:<name>[:split]' or jsonl:/tsv:/csv:<path>"
    )
  if scheme == "builtin" and arg != "python-docs":
    raise ConfigError(f"config.{key}={spec!r}: the builtin dataset is 'builtin:python-docs'")
  return scheme, arg


def local_files(pattern: str, key: str = "dataset") -> list[str]:
  """The files a comma-separated list of paths or globs names, in order; a part that matches
  nothing, or only directories, fails naming it."""
  paths = []
  for part in pattern.split(","):
    matches = sorted(glob.glob(os.path.expanduser(part)))
    if not matches:
      raise DataNotFoundError(
        f"config.{key}: no file matches {part!r} (from {os.getcwd()}); pass an existing path "
        "or glob, e.g. --config.dataset=text:data/*.txt"
      )
    files = [m for m in matches if os.path.isfile(m)]
    if not files:
      raise DataNotFoundError(
        f"config.{key}: {part!r} matches only directories ({matches[0]}); name the files, "
        f"e.g. {os.path.join(part, '*.txt')}"
      )
    paths += files
  return paths


def check(spec: str, text_feature: str, key: str = "dataset") -> None:
  """Everything about a dataset string that can be checked without reading data."""
  scheme, arg = parse(spec, key)
  if scheme == "text":
    local_files(arg, key)
    if text_feature != "text":
      raise ConfigError(
        f"config.text_feature={text_feature!r}, but text: files have one field, 'text'; "
        "leave text_feature at 'text' (it names a field of TFDS datasets)"
      )
  elif scheme in RECORD_FILES:
    local_files(arg, key)
  elif scheme == "pairs":
    paths = local_files(arg, key)
    if len(paths) != 2:
      raise ConfigError(
        f"config.{key}={spec!r}: 'pairs:' takes exactly two files, source then target "
        f"(matched {len(paths)}: {paths})"
      )


def fingerprint(spec: str) -> list:
  """What identifies a dataset's content without reading it: each local file's path, size
  and modification time; the spec itself for builtin and TFDS datasets."""
  if not spec:
    return []
  scheme, arg = spec.partition(":")[::2]
  if scheme not in ("text", "pairs", *RECORD_FILES):
    return [spec]
  stamp = []
  for path in local_files(arg):
    st = os.stat(path)
    stamp.append([os.path.abspath(path), st.st_size, st.st_mtime_ns])
  return stamp
