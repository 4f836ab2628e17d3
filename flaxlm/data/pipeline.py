"""From a `config.dataset` string to sharded batches, via tokenize -> cache -> window -> Grain.

Tokens of the whole source are concatenated (documents separated by EOS when the tokenizer
has one) and cached in `<workdir>/data/` as .npy (no pickle). Training examples are windows
of seq_len + 1 tokens; `window_stride = seq_len` packs the stream without overlap, `1`
samples every offset (nanoGPT's random crops). The Grain pipeline is a `MapDataset`, so the
batch for step s is a pure function of (seed, s): the iterator state saved in checkpoints is
one integer and resume is exact, on any number of hosts.
"""

from __future__ import annotations

import dataclasses
import json
import os

import grain
import jax
import numpy as np

from flaxlm.data import sources, tokenizers
from flaxlm.objectives import Objective
from flaxlm.objectives.causal import causal_lm_objective


@dataclasses.dataclass(frozen=True)
class DataConfig:
  dataset: str = sources.DEFAULT_DATASET
  data_dir: str = ""  # TFDS cache; '' = ~/.cache/flaxlm/tfds
  text_feature: str = "text"
  seq_len: int = 128
  window_stride: int = 0  # 0 = seq_len (packed, no overlap)
  val_fraction: float = 0.1  # tail of the token stream held out when the source has no split
  eval_dataset: str = ""  # a separate dataset string for validation ('' = held-out split)
  target_len: int = 0  # encoder-decoder: decoder tokens per row (0 = seq_len)
  pairs_per_example: int = 1  # parallel text: pairs packed per row
  seed: int = 0


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

  def save(self, path: str) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append '.npz' to a name
      np.savez(f, **vars(self))

  @classmethod
  def load(cls, path: str) -> Pairs:
    with np.load(path, allow_pickle=False) as z:
      return cls(**{k: z[k] for k in z.files})


@dataclasses.dataclass
class TokenizedCorpus:
  tokenizer: object
  train: np.ndarray | Pairs  # int32 (num_tokens,) token stream, or pairs for parallel text
  validation: np.ndarray | Pairs


def tfds_dir(config: DataConfig) -> str:
  return config.data_dir or os.path.expanduser("~/.cache/flaxlm/tfds")


def _encode_stream(tokenizer, documents: list[str]) -> np.ndarray:
  ids: list[int] = []
  for doc in documents:
    ids.extend(tokenizer.encode(doc))
    if tokenizer.eos_id is not None:
      ids.append(tokenizer.eos_id)
  return np.asarray(ids, dtype=np.int32)


def load_corpus(
  config: DataConfig, tok_config: tokenizers.TokenizerConfig, cache_dir: str, tokenizer=None
) -> TokenizedCorpus:
  """Tokenized train/validation streams, built once and cached under `cache_dir`.

  `tokenizer` (e.g. restored from a checkpoint) wins over training a new one; a cache made
  from another dataset or tokenizer is rebuilt rather than silently reused.
  """
  os.makedirs(cache_dir, exist_ok=True)
  stamp = {
    "dataset": config.dataset,
    "val_fraction": config.val_fraction,
    "eval_dataset": config.eval_dataset,
    "tokenizer": dataclasses.asdict(tok_config),
  }
  stamp_path = os.path.join(cache_dir, "corpus.json")
  tok_path = os.path.join(cache_dir, "tokenizer.json")
  splits = ("train", "validation")
  # A token stream is stored as .npy, parallel text as Pairs' .npz.
  kinds = {
    "stream": ({s: os.path.join(cache_dir, f"{s}.npy") for s in splits}, _load_npy),
    "pairs": ({s: os.path.join(cache_dir, f"{s}_pairs.npz") for s in splits}, Pairs.load),
  }
  cached = os.path.exists(stamp_path) and os.path.exists(tok_path)
  if cached and _read_json(stamp_path) == stamp:
    saved = tokenizers.tokenizer_from_json(_read_json(tok_path))
    if tokenizer is None or tokenizer.to_json() == saved.to_json():
      for paths, load in kinds.values():
        if all(os.path.exists(p) for p in paths.values()):
          return TokenizedCorpus(saved, load(paths["train"]), load(paths["validation"]))

  source = sources.open_source(config.dataset, tfds_dir(config), config.text_feature)
  build = _tokenize_pairs if source.is_pairs else _tokenize_stream
  tokenizer, train, validation = build(config, tok_config, source, tokenizer)
  if jax.process_index() == 0:  # every host computes the same; one writes
    paths = kinds["pairs" if source.is_pairs else "stream"][0]
    for split, data in (("train", train), ("validation", validation)):
      if isinstance(data, Pairs):
        data.save(paths[split])
      else:
        np.save(paths[split], data)
    _write_json(tok_path, tokenizer.to_json())
    _write_json(stamp_path, stamp)
  return TokenizedCorpus(tokenizer, train, validation)


def same_on_every_host(tokenizer):
  """Process 0's tokenizer on every process. Hosts train on the same text, but training need
  not be deterministic (Hugging Face's WordPiece trainer breaks count ties in hash-map order)."""
  if jax.process_count() == 1:
    return tokenizer
  from jax.experimental import multihost_utils

  blob = np.frombuffer(json.dumps(tokenizer.to_json()).encode(), np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.int32(blob.size)))
  # Arrays of one shape everywhere; only process 0's content is broadcast.
  mine = blob if jax.process_index() == 0 else np.zeros(size, np.uint8)
  blob = np.asarray(multihost_utils.broadcast_one_to_all(mine), np.uint8)
  return tokenizers.tokenizer_from_json(json.loads(blob.tobytes().decode()))


def _load_npy(path: str) -> np.ndarray:
  return np.load(path, allow_pickle=False)


def _eval_source(config: DataConfig) -> tuple[sources.TextSource, str]:
  """The `eval_dataset` source and the split to validate on (its validation split, if any)."""
  source = sources.open_source(config.eval_dataset, tfds_dir(config), config.text_feature)
  return source, "validation" if "validation" in source.splits else "train"


def _tokenize_stream(config, tok_config, source, tokenizer):
  """(tokenizer, train, validation) token streams of plain text."""
  train_docs = source.documents("train")
  val_docs = source.documents("validation") if "validation" in source.splits else None
  if config.eval_dataset:  # e.g. held-out text from another corpus, never trained on
    eval_source, split = _eval_source(config)
    val_docs = eval_source.documents(split)
  if tokenizer is None:
    tokenizer = same_on_every_host(
      tokenizers.train_tokenizer(
        tok_config, train_docs + (val_docs or []) if tok_config.kind == "char" else train_docs
      )
    )
  train = _encode_stream(tokenizer, train_docs)
  if val_docs is not None:
    validation = _encode_stream(tokenizer, val_docs)
  else:  # hold out the tail, as nanoGPT does (first 90% train, last 10% validation)
    cut = int(len(train) * (1.0 - config.val_fraction))
    train, validation = train[:cut], train[cut:]
  return tokenizer, train, validation


def _tokenize_pairs(config, tok_config, source, tokenizer):
  """(tokenizer, train, validation) Pairs of parallel text, with one joint tokenizer for
  both languages (trained on both sides)."""
  train_pairs = source.pairs("train")
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
    tokenizer = same_on_every_host(tokenizers.train_tokenizer(tok_config, texts))
  return tokenizer, Pairs.encode(tokenizer, train_pairs), Pairs.encode(tokenizer, val_pairs)


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _write_json(path, obj):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f)
  os.replace(tmp, path)


class Windows:
  """Random-access windows of `length` tokens over a token stream, every `stride` tokens."""

  def __init__(self, tokens: np.ndarray, length: int, stride: int):
    if len(tokens) < length:
      raise ValueError(
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
  """Window i paired with window partner[i], a fixed random permutation (NSP's "random
  next segment": almost always from another part of the corpus)."""

  def __init__(self, windows: Windows, seed: int):
    self.windows = windows
    self.partner = np.random.default_rng(seed).permutation(len(windows))

  def __len__(self) -> int:
    return len(self.windows)

  def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    return self.windows[i], self.windows[self.partner[int(i)]]


def _windows(tokens: np.ndarray, config: DataConfig, objective: Objective, stride: int):
  """The objective's windows over `tokens`; stride 0 packs them (consecutive causal windows
  share one token: the last target is the next window's first input)."""
  length = objective.window_length(config.seq_len)
  windows = Windows(tokens, length, stride or min(length, config.seq_len))
  return WithPartner(windows, config.seed) if objective.partner_window else windows


def _records(data, config: DataConfig, objective: Objective, stride: int):
  """What the objective's examples are made from: windows of a token stream, or pairs."""
  if bool(objective.pairs_per_example) != isinstance(data, Pairs):
    needs = "parallel text (pairs:<src>,<tgt>)" if objective.pairs_per_example else "plain text"
    raise ValueError(
      f"objective {objective.name!r} trains on {needs}, but config.dataset={config.dataset!r} "
      f"is {'parallel text' if isinstance(data, Pairs) else 'plain text'}; set --config.objective "
      "(seq2seq for pairs) or --config.dataset to match"
    )
  if isinstance(data, Pairs):
    if not len(data):
      raise ValueError(f"{config.dataset!r}: this split holds no sentence pairs")
    return data
  return _windows(data, config, objective, stride)


def _examples(ds: grain.MapDataset, objective: Objective, seed: int) -> grain.MapDataset:
  if objective.pairs_per_example:  # group the pairs each row packs
    ds = ds.batch(objective.pairs_per_example, batch_fn=list)
  return ds.random_map(objective.example, seed=seed)


def train_dataset(
  data: np.ndarray | Pairs,
  config: DataConfig,
  global_batch: int,
  objective: Objective | None = None,
) -> grain.MapDataset:
  """Infinite, per-epoch reshuffled batches; dataset[s] is the global batch of step s."""
  objective = objective or causal_lm_objective()
  records = _records(data, config, objective, config.window_stride)
  ds = grain.MapDataset.source(records).shuffle(seed=config.seed).repeat()
  return _examples(ds, objective, config.seed).batch(global_batch, drop_remainder=True)


def eval_batches(
  data: np.ndarray | Pairs,
  config: DataConfig,
  batch: int,
  num_batches: int,
  objective: Objective | None = None,
) -> list[dict]:
  """The first `num_batches` non-overlapping validation batches, in order (a fixed eval set)."""
  objective = objective or causal_lm_objective()
  records = _records(data, config, objective, stride=0)
  ds = _examples(grain.MapDataset.source(records), objective, config.seed + 1)
  ds = ds.batch(batch, drop_remainder=True)
  n = min(num_batches, len(ds))
  if n == 0:
    raise ValueError(
      f"the validation split holds {len(records)} sequences, fewer than one eval batch of {batch}; "
      "lower --config.eval_batch_size or raise --config.val_fraction"
    )
  return [ds[i] for i in range(n)]


def process_rows(sharding: jax.sharding.Sharding, global_shape: tuple[int, ...]) -> np.ndarray:
  """The global batch rows this process's devices hold under `sharding`, in order."""
  rows = set()
  for index in sharding.addressable_devices_indices_map(global_shape).values():
    rows.update(range(*index[0].indices(global_shape[0])))
  return np.array(sorted(rows))


def to_global(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """A global numpy batch -> jax.Arrays laid out by `sharding`, each host sending its rows."""
  out = {}
  for key, value in batch.items():
    rows = process_rows(sharding, value.shape)
    out[key] = jax.make_array_from_process_local_data(sharding, value[rows], value.shape)
  return out
