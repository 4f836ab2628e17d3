"""Labelled data for fine-tuning: a record spec -> records (dicts of fields), each knowing the
file and line it came from, so a malformed record, a missing column or an unknown label is
reported as `file:line`.

  tsv:<path>     tab-separated, a header row names the columns
  csv:<path>     comma-separated (RFC 4180 quoting), a header row names the columns
  jsonl:<path>   one JSON object per line
  conll:<path>   one token per line, columns separated by whitespace, blank lines between
                 sentences, -DOCSTART- lines skipped -> {'words': [...], 'tags': [...]}
                 (which columns hold the word and the tag: `word_index`, `tag_index`)
  squad:<path>   SQuAD v1 JSON -> {'id', 'context', 'question', 'answers': [{'text',
                 'answer_start'}]} per question
  pairs:<source>,<target>   two line-aligned files -> {'source', 'target'} per line (as
                 train.py's pairs: datasets; lines empty on either side are skipped)
  tfds:<name>[:split]   a TFDS catalog dataset's records (its features are the columns)

Tasks name the fields they read through `config.columns` (e.g. columns.text='content').
"""

from __future__ import annotations

import csv
import json
import os

from flaxlm.errors import ConfigError, DataError, DataNotFoundError

FORMATS = ("tsv", "csv", "jsonl", "conll", "squad", "pairs", "tfds")
WHERE = "_where"  # the field every record carries: "path:line"


def parse(spec: str, key: str = "train_data") -> tuple[str, str]:
  fmt, sep, arg = spec.partition(":")
  if not sep or fmt not in FORMATS or not arg:
    raise ConfigError(
      f"config.{key}={spec!r}: use one of {', '.join(f + ':<path>' for f in FORMATS[:-1])} or "
      "tfds:<name>[:split]"
    )
  return fmt, arg


def check(spec: str, key: str = "train_data") -> None:
  """The spec's form, and that its file exists (no reading)."""
  fmt, arg = parse(spec, key)
  if fmt == "pairs" and len(arg.split(",")) != 2:
    raise ConfigError(f"config.{key}={spec!r}: pairs: takes two files, source then target")
  for part in arg.split(",") if fmt == "pairs" else ([] if fmt == "tfds" else [arg]):
    path = os.path.expanduser(part)
    if not os.path.exists(path):
      raise DataNotFoundError(f"config.{key}: {part} does not exist (from {os.getcwd()})")
    if os.path.isdir(path):
      raise DataNotFoundError(f"config.{key}: {part} is a directory; name the file")


def read(spec: str, word_index: int = 0, tag_index: int = -1, key: str = "train_data") -> list:
  """The records of a spec, in file order, each with a WHERE field."""
  check(spec, key)
  fmt, arg = parse(spec, key)
  if fmt == "tfds":
    return _tfds(arg)
  if fmt == "pairs":
    return _pairs(*arg.split(","))
  path = os.path.expanduser(arg)
  try:
    with open(path, encoding="utf-8", newline="") as f:
      text = f.read()
  except UnicodeDecodeError as e:
    line = open(path, "rb").read()[: e.start].count(b"\n") + 1
    raise DataError(f"{path}:{line} is not UTF-8 ({e.reason}); convert the file first") from None
  readers = {"tsv": _delimited, "csv": _delimited, "jsonl": _jsonl, "squad": _squad}
  if fmt == "conll":
    return _conll(path, text, word_index, tag_index)
  return readers[fmt](path, text, "\t" if fmt == "tsv" else ",")


def _delimited(path: str, text: str, delimiter: str) -> list[dict]:
  rows = list(csv.reader(text.splitlines(), delimiter=delimiter, quoting=_quoting(delimiter)))
  if not rows:
    raise DataError(f"{path} is empty; it needs a header row naming the columns")
  header, records = [h.strip() for h in rows[0]], []
  for line, row in enumerate(rows[1:], start=2):
    if not row or all(not c.strip() for c in row):
      continue
    if len(row) != len(header):
      raise DataError(
        f"{path}:{line} has {len(row)} fields but the header names {len(header)} "
        f"({', '.join(header)}); fix the line or its delimiter"
      )
    records.append({**dict(zip(header, row, strict=True)), WHERE: f"{path}:{line}"})
  return records


def _quoting(delimiter: str):
  # TSV files (GLUE's) contain bare quotes inside text; CSV uses RFC 4180 quoting.
  return csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL


def _jsonl(path: str, text: str, _) -> list[dict]:
  records = []
  for line, raw in enumerate(text.splitlines(), start=1):
    if not raw.strip():
      continue
    try:
      record = json.loads(raw)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{line} is not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
      raise DataError(f"{path}:{line} is a JSON {type(record).__name__}, not an object")
    records.append({**record, WHERE: f"{path}:{line}"})
  return records


def _conll(path: str, text: str, word_index: int, tag_index: int) -> list[dict]:
  records, words, tags, start = [], [], [], 1
  for line, raw in enumerate(text.splitlines() + [""], start=1):
    fields = raw.split()
    if not fields or fields[0] == "-DOCSTART-":
      if words:
        records.append({"words": words, "tags": tags, WHERE: f"{path}:{start}"})
      words, tags, start = [], [], line + 1
      continue
    word_at, tag_at = (i if i >= 0 else len(fields) + i for i in (word_index, tag_index))
    if not (0 <= word_at < len(fields) and 0 <= tag_at < len(fields)) or word_at == tag_at:
      raise DataError(
        f"{path}:{line} has {len(fields)} column{'s' * (len(fields) != 1)} ({raw.strip()!r}); "
        f"expected a word (columns.word_index={word_index}) and its tag "
        f"(columns.tag_index={tag_index}) in different columns of every token line"
      )
    words.append(fields[word_at])
    tags.append(fields[tag_at])
  return records


def _squad(path: str, text: str, _) -> list[dict]:
  try:
    data = json.loads(text)["data"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise DataError(f"{path} is not SQuAD JSON (data -> paragraphs -> qas): {e}") from None
  records = []
  for a, article in enumerate(data):
    for p, paragraph in enumerate(article.get("paragraphs", [])):
      for q, qa in enumerate(paragraph.get("qas", [])):
        where = f"{path}:data[{a}].paragraphs[{p}].qas[{q}]"
        try:
          records.append(
            {
              "id": str(qa.get("id", f"{a}-{p}-{q}")),
              "context": paragraph["context"],
              "question": qa["question"],
              "answers": [
                {"text": x["text"], "answer_start": int(x["answer_start"])}
                for x in qa.get("answers", [])
              ],
              WHERE: where,
            }
          )
        except (KeyError, TypeError, ValueError) as e:
          raise DataError(f"{where} is malformed ({type(e).__name__}: {e})") from None
  return records


def _pairs(source: str, target: str) -> list[dict]:
  sides = []
  for path in (source, target):
    with open(os.path.expanduser(path), encoding="utf-8") as f:
      sides.append(f.read().rstrip("\n").split("\n"))
  if len(sides[0]) != len(sides[1]):
    raise DataError(
      f"{source} has {len(sides[0])} lines but {target} has {len(sides[1])}; they must align"
    )
  return [
    {"source": a.strip(), "target": b.strip(), WHERE: f"{source}:{i}"}
    for i, (a, b) in enumerate(zip(*sides, strict=True), start=1)
    if a.strip() and b.strip()
  ]


def _tfds(arg: str) -> list[dict]:
  from flaxlm.data.catalog import tfds_builder

  name, _, split = arg.partition(":")
  builder = tfds_builder(name, "")
  builder.download_and_prepare()
  source = builder.as_data_source(split=split or "train")
  records = []
  for i in range(len(source)):
    record = {k: _plain(v) for k, v in source[i].items()}
    records.append({**record, WHERE: f"tfds:{name}:{split or 'train'}[{i}]"})
  return records


def _plain(v):
  if isinstance(v, bytes):
    return v.decode("utf-8")
  if hasattr(v, "tolist"):
    return _plain(v.tolist())
  if isinstance(v, list):
    return [_plain(x) for x in v]
  return v


def has_field(record: dict, column: str) -> bool:
  return any(c in record for c in column.split("|"))


def field(record: dict, column: str, what: str):
  """record[column], or a DataError naming the record's file:line and its columns. A column
  may list alternatives, 'sentence|content': the first the record has (files differ)."""
  for name in column.split("|"):
    if name in record:
      return record[name]
  have = ", ".join(k for k in record if k != WHERE)
  raise DataError(
    f"{record.get(WHERE, '?')} has no column {column!r} ({have}); set --config.columns.{what}="
    "<column> (alternatives: 'a|b')"
  )
