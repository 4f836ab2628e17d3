"""A pretraining corpus: the source tokenized once into a token stream (or sentence pairs),
cached in `<workdir>/data/` (or a shared `corpus_cache`), and the random-access records
objectives cut from it.

Tokens of the whole source are concatenated (documents separated by EOS when the tokenizer
has one) into memory-mapped shards (`flaxlm.data.shards`: written by parallel worker
processes, read lazily, so neither preparing nor training holds the corpus in RAM); sentence
pairs into an .npz (no pickle anywhere). The cache is keyed by everything that shapes the
tokens: the dataset strings, a fingerprint of every input file (path, size, modification
time), the TFDS cache, the text fields, the validation split and the tokenizer config;
anything else is rebuilt rather than silently reused.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import shutil

import jax
import numpy as np

from flaxlm.data import shards, spec, tokenizers
from flaxlm.data.shards import TokenShards
from flaxlm.data.spec import DataConfig
from flaxlm.errors import DataError
from flaxlm.workdir import as_path

log = logging.getLogger("flaxlm")


class Pairs:
  """Tokenized (source, target) pairs, random access; stored as two flat streams + offsets."""

  def __init__(self, source, source_offsets, target, target_offsets):
    self.source, self.source_offsets = source, source_offsets
    self.target, self.target_offsets = target, target_offsets

  @classmethod
  def encode(cls, tokenizer, pairs: list[tuple[str, str]]) -> Pairs:
    sides = []
    for side in zip(*pairs, strict=True) if pairs else ((), ()):
      ids = [np.asarray(tokenizer.encode(text), np.int32) for text in side]
      offsets = np.cumsum([0] + [len(x) for x in ids]).astype(np.int64)
      sides += [np.concatenate(ids) if ids else np.zeros(0, np.int32), offsets]
    return cls(*sides)

  def __len__(self) -> int:
    return len(self.source_offsets) - 1

  def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    i = int(i)
    s0, s1 = self.source_offsets[i : i + 2]
    t0, t1 = self.target_offsets[i : i + 2]
    return self.source[s0:s1], self.target[t0:t1]

  def save(self, path) -> None:
    with as_path(path).open("wb") as f:  # a file object: np.savez would append '.npz' to a name
      np.savez(f, **vars(self))

  @classmethod
  def load(cls, path) -> Pairs:
    with as_path(path).open("rb") as f, np.load(f, allow_pickle=False) as z:
      return cls(**{k: z[k] for k in z.files})


class Windows:
  """Random-access windows of `length` tokens over a token stream, every `stride` tokens."""

  def __init__(self, tokens: np.ndarray, length: int, stride: int):
    if len(tokens) < length:
      raise DataError(
        f"the corpus split has {len(tokens)} tokens, fewer than one sequence of {length}; "
        "use a smaller --config.seq_len or more text"
      )
    self.tokens, self.length, self.stride = tokens, length, stride

  def __len__(self) -> int:
    return (len(self.tokens) - self.length) // self.stride + 1

  def __getitem__(self, i: int) -> np.ndarray:
    start = int(i) * self.stride
    return self.tokens[start : start + self.length]


class WithPartner:
  """Record i paired with record partner[i], a fixed random permutation (NSP's "random next
  segment": almost always from another part of the corpus)."""

  def __init__(self, records, seed: int):
    self.records = records
    self.partner = np.random.default_rng(seed).permutation(len(records))

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    return self.records[i], self.records[self.partner[int(i)]]


@dataclasses.dataclass
class TokenizedCorpus:
  tokenizer: object
  train: TokenShards | Pairs  # the training token stream, or pairs for parallel text
  validation: TokenShards | Pairs


def cache_stamp(config: DataConfig, tok_config: tokenizers.TokenizerConfig) -> dict:
  """Everything that shapes the cached tokens (see the module docstring)."""
  return {
    "dataset": config.dataset,
    "dataset_files": spec.fingerprint(config.dataset),
    "eval_dataset": config.eval_dataset,
    "eval_dataset_files": spec.fingerprint(config.eval_dataset),
    "data_dir": config.data_dir,
    "text_feature": config.text_feature,
    "val_fraction": config.val_fraction,
    "tokenizer": dataclasses.asdict(tok_config),
  }


def load_corpus(
  config: DataConfig,
  tok_config: tokenizers.TokenizerConfig,
  cache_dir,
  tokenizer=None,
  shared: bool = False,
) -> TokenizedCorpus:
  """Tokenized train/validation splits, built once and cached under `cache_dir`.

  `tokenizer` (e.g. restored from a checkpoint) wins over training a new one; a cache made
  from other inputs or another tokenizer is rebuilt rather than silently reused, unless it is
  `shared` (a `corpus_cache` that other runs may be reading): then it is refused, naming what
  differs. Process 0 prepares; the others wait for it and read its files, or prepare their
  own when the cache folder is not shared."""
  cache_dir = as_path(cache_dir)
  cache_dir.mkdir(parents=True, exist_ok=True)
  stamp = json.loads(json.dumps(cache_stamp(config, tok_config)))  # lists, as read back
  cached = _cached(cache_dir, stamp, tokenizer)
  if cached is None and shared:
    _refuse_another_corpus(cache_dir, stamp)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    # Every process takes part in each collective below, whatever its cache holds.
    if cached is None and jax.process_index() == 0:
      cached = _prepare(config, tok_config, cache_dir, stamp, tokenizer)
    multihost_utils.sync_global_devices("flaxlm corpus prepared")
    cached = cached or _cached(cache_dir, stamp, tokenizer)
    # A host whose cache folder is not shared builds its own, with process 0's tokenizer.
    tokenizer = same_on_every_host(cached.tokenizer if cached else None)
  return cached or _prepare(config, tok_config, cache_dir, stamp, tokenizer)


def _refuse_another_corpus(cache_dir, stamp: dict) -> None:
  """Fails when `cache_dir` holds a corpus (a prepared one: it is not ours to replace)."""
  if not (cache_dir / "corpus.json").exists():
    return  # nothing there yet: this run prepares it
  differ = _differences(_read_json(cache_dir / "corpus.json").get("stamp", {}), stamp)
  what = f"other {', '.join(differ)}" if differ else "another tokenizer than this run's checkpoint"
  raise DataError(
    f"corpus_cache={cache_dir} holds a corpus prepared with {what}; prepare one for this "
    "config (python -m flaxlm.data.prepare --config=<file> [--config.key=value ...] --out=<dir>) "
    "or point --config.corpus_cache at another folder"
  )


def _differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
  """Dotted keys whose values differ between two cache stamps."""
  keys = []
  for key in sorted(saved.keys() | now.keys()):
    a, b = saved.get(key), now.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      keys += _differences(a, b, f"{prefix}{key}.")
    elif a != b:
      keys.append(prefix + key)
  return keys


def _cached(cache_dir, stamp: dict, tokenizer) -> TokenizedCorpus | None:
  stamp_path, tok_path = cache_dir / "corpus.json", cache_dir / "tokenizer.json"
  if not (stamp_path.exists() and tok_path.exists()):
    return None
  saved = _read_json(stamp_path)
  if saved.get("stamp") != stamp:
    return None
  cached_tokenizer = tokenizers.tokenizer_from_json(_read_json(tok_path))
  if tokenizer is not None and tokenizer.to_json() != cached_tokenizer.to_json():
    return None
  if saved["kind"] == "pairs":
    train, validation = (Pairs.load(cache_dir / f"{s}_pairs.npz") for s in ("train", "validation"))
  else:
    stream = TokenShards.open(cache_dir / "train")
    if saved.get("cut") is not None:  # the validation split is the stream's tail
      train, validation = stream.view(0, saved["cut"]), stream.view(saved["cut"], len(stream))
    else:
      train, validation = stream, TokenShards.open(cache_dir / "validation")
  return TokenizedCorpus(cached_tokenizer, train, validation)


def _prepare(config, tok_config, cache_dir, stamp: dict, tokenizer) -> TokenizedCorpus:
  from flaxlm.data import sources  # TFDS loads only when a corpus is built

  log.info("tokenizing %s into %s", config.dataset, cache_dir)
  for stale in ("train", "validation"):  # a previous corpus with another stamp
    if (cache_dir / stale).exists():
      shutil.rmtree(cache_dir / stale)
  source = sources.open_source(config.dataset, spec.tfds_dir(config), config.text_feature)
  if source.is_pairs:
    tokenizer, train, validation = _tokenize_pairs(config, tok_config, source, tokenizer)
    for split, data in (("train", train), ("validation", validation)):
      data.save(cache_dir / f"{split}_pairs.npz")
    saved = {"stamp": stamp, "kind": "pairs"}
  else:
    tokenizer, train, validation, cut = _tokenize_stream(
      config, tok_config, source, tokenizer, cache_dir
    )
    saved = {"stamp": stamp, "kind": "stream", "cut": cut}
  _write_json(cache_dir / "tokenizer.json", tokenizer.to_json())
  _write_json(cache_dir / "corpus.json", saved)
  return TokenizedCorpus(tokenizer, train, validation)


def same_on_every_host(tokenizer):
  """Process 0's tokenizer on every process (the others may pass None). Hosts train on the
  same text, and every tokenizer trainer here is deterministic, but a host with other inputs
  must not diverge. A collective: every process calls it."""
  if jax.process_count() == 1:
    return tokenizer
  from jax.experimental import multihost_utils

  mine = json.dumps(tokenizer.to_json()).encode() if jax.process_index() == 0 else b""
  blob = np.frombuffer(mine, np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.int32(blob.size)))
  # Arrays of one shape everywhere; only process 0's content is broadcast.
  mine = blob if jax.process_index() == 0 else np.zeros(size, np.uint8)
  blob = np.asarray(multihost_utils.broadcast_one_to_all(mine), np.uint8)
  return tokenizers.tokenizer_from_json(json.loads(blob.tobytes().decode()))


def _eval_source(config: DataConfig):
  """The `eval_dataset` source and the split to validate on (its validation split, if any)."""
  from flaxlm.data import sources

  source = sources.open_source(config.eval_dataset, spec.tfds_dir(config), config.text_feature)
  return source, "validation" if "validation" in source.splits else "train"


def _tokenize_stream(config, tok_config, source, tokenizer, cache_dir):
  """(tokenizer, train, validation, cut) token streams of plain text, written as shards;
  `cut` is where validation starts when it is the training stream's tail (else None)."""
  has_validation = "validation" in source.splits or bool(config.eval_dataset)
  if not any(d.strip() for d in source.iter_documents("train")):  # stops at the first text
    raise DataError(
      f"config.dataset={config.dataset!r} holds no text; point it at files with content"
    )
  if config.eval_dataset:  # e.g. held-out text from another corpus, never trained on
    eval_source, split = _eval_source(config)
    val_docs = lambda: eval_source.iter_documents(split)
  elif has_validation:
    val_docs = lambda: source.iter_documents("validation")
  if tokenizer is None:
    docs = source.iter_documents("train")
    if tok_config.kind == "char" and has_validation:  # every character needs an id
      docs = itertools.chain(docs, val_docs())
    tokenizer = tokenizers.train_tokenizer(tok_config, docs)  # on one process: see load_corpus
  train = shards.write(source.iter_documents("train"), tokenizer, cache_dir / "train")
  if has_validation:
    if not any(d.strip() for d in val_docs()):
      raise DataError(f"config.eval_dataset={config.eval_dataset!r} holds no text")
    validation = shards.write(val_docs(), tokenizer, cache_dir / "validation")
    return tokenizer, train, validation, None
  # No validation split: hold out the tail, as nanoGPT does (first 90% train, last 10%).
  cut = int(len(train) * (1.0 - config.val_fraction))
  return tokenizer, train.view(0, cut), train.view(cut, len(train)), cut


def _tokenize_pairs(config, tok_config, source, tokenizer):
  """(tokenizer, train, validation) Pairs of parallel text, with one joint tokenizer for
  both languages (trained on both sides)."""
  train_pairs = source.pairs("train")
  if not train_pairs:
    raise DataError(f"config.dataset={config.dataset!r} holds no sentence pairs")
  if config.eval_dataset:
    eval_source, split = _eval_source(config)
    val_pairs = eval_source.pairs(split)
  elif "validation" in source.splits:
    val_pairs = source.pairs("validation")
  else:  # hold out the last pairs
    cut = int(len(train_pairs) * (1.0 - config.val_fraction))
    train_pairs, val_pairs = train_pairs[:cut], train_pairs[cut:]
  if tokenizer is None:
    texts = [t for pair in train_pairs for t in pair]
    tokenizer = tokenizers.train_tokenizer(tok_config, texts)
  return tokenizer, Pairs.encode(tokenizer, train_pairs), Pairs.encode(tokenizer, val_pairs)


def _read_json(path):
  return json.loads(as_path(path).read_text())


def _write_json(path, obj):
  path = as_path(path)
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(json.dumps(obj))
  tmp.replace(path)
