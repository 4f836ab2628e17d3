"""What a fine-tuning run takes in: its config, checked before any data is read, and its
records, read (eval_data, or a seeded val_fraction of train_data) and cleaned."""

from __future__ import annotations

import logging
import pathlib

import numpy as np

from flaxlm.config.finetuning import FinetuneConfig
from flaxlm.data import formats
from flaxlm.errors import ConfigError, DataError, DataNotFoundError
from flaxlm.models import registry
from flaxlm.train import validation
from flaxlm.workdir import Workdir

log = logging.getLogger("flaxlm")


def check(ft: FinetuneConfig, workdir: Workdir | None = None) -> None:
  """Everything that can be checked before data is read."""
  hint = ft.init_from_command
  validation.check_loop_keys(ft)
  if not ft.train_data:
    raise ConfigError(
      "train_data is empty; set --config.train_data=tsv:<path> (or csv:, jsonl:, conll:, ...)"
    )
  formats.check(ft.train_data, "train_data")
  if ft.eval_data:
    formats.check(ft.eval_data, "eval_data")
  elif not 0 < ft.val_fraction < 1:
    raise ConfigError(
      f"val_fraction={ft.val_fraction}: with no eval_data, that share of train_data is the dev "
      "set; use a fraction in (0, 1) or set --config.eval_data"
    )
  if ft.adapters_from:
    folder = pathlib.Path(ft.adapters_from[len("hf:") :]).expanduser()
    if not (folder / "adapter_config.json").is_file():
      raise DataNotFoundError(
        f"adapters_from={ft.adapters_from!r} holds no adapter_config.json; write peft adapters "
        "with: python -m flaxlm.convert export <lora workdir> <dir> --adapters"
      )
  if ft.kfold == 1 or ft.kfold < 0:
    raise ConfigError(f"kfold={ft.kfold}; use 0 (off) or 2 or more folds")
  if ft.init_from.startswith("hf:"):  # a Hugging Face model folder (flaxlm.convert)
    from flaxlm.convert import files

    try:
      files.read_config(ft.init_from[len("hf:") :])
    except DataNotFoundError as e:
      if not hint:
        raise
      raise DataNotFoundError(f"{e}; get it with: {hint}") from None
  elif ft.init_from:
    ckpts = Workdir(ft.init_from).checkpoints
    if not ckpts.exists() or not any(ckpts.iterdir()):
      fix = f"; create it with: {hint}" if hint else "; train one with train.py first"
      raise DataNotFoundError(f"init_from={ft.init_from!r} holds no pretraining checkpoint{fix}")
  else:
    family = registry.family_of(ft.model_family)
    config = registry.model_config(ft.model_family, ft.model_overrides)
    validation.check_lengths(config, {"task.max_len": getattr(ft.task, "max_len", 0)})
    validation.check_attention(config)
    del family
  validation.check_batches(
    ft.batch_size, ft.eval_batch_size, ft.step.accum_steps, validation.make_mesh(ft.mesh)
  )
  if workdir is not None:
    workdir.prepare()


def read_records(ft: FinetuneConfig) -> tuple[list[dict], list[dict]]:
  """(train, dev) records; the dev set is eval_data, or a seeded val_fraction of train_data."""
  c = ft.columns
  train = formats.read(ft.train_data, c.word_index, c.tag_index, "train_data")
  if ft.eval_data:
    dev = formats.read(ft.eval_data, c.word_index, c.tag_index, "eval_data")
  else:
    order = np.random.default_rng(ft.seed).permutation(len(train))
    cut = int(round(len(train) * ft.val_fraction))
    dev = [train[i] for i in sorted(order[:cut])]
    train = [train[i] for i in sorted(order[cut:])]
  if not train:
    raise DataError(f"train_data={ft.train_data!r} holds no records")
  if not dev:
    raise DataError("the dev set is empty; set --config.eval_data or raise val_fraction")
  return train, dev


def clean(task, records: list[dict], ft: FinetuneConfig, split: str) -> list[dict]:
  """Drops empty and duplicate records (and, with max_tokens, over-long ones), and logs it."""
  kept, seen, dropped = [], set(), {"empty": 0, "duplicate": 0, "too long": 0}
  for r in records:
    key = task.key(r)
    flat = key if isinstance(key, tuple) else (key,)
    if not any(str(x).strip() for x in flat if x is not None):
      dropped["empty"] += 1
      continue
    if ft.drop_duplicates and split == "train" and key in seen:
      dropped["duplicate"] += 1
      continue
    seen.add(key)
    kept.append(r)
  if ft.max_train_examples and split == "train":
    kept = kept[: ft.max_train_examples]
  if ft.max_eval_examples and split == "dev":
    kept = kept[: ft.max_eval_examples]
  log.info(
    "%s: %d records kept of %d (dropped: %s)",
    split,
    len(kept),
    len(records),
    ", ".join(f"{n} {why}" for why, n in dropped.items() if n) or "none",
  )
  return kept


def texts_for_tokenizer(task, records: list[dict]) -> list[str]:
  """The training text a from-scratch tokenizer learns from."""
  texts = []
  for r in records:
    key = task.key(r)
    texts.append(" ".join(str(x) for x in (key if isinstance(key, tuple) else (key,)) if x))
  return texts
