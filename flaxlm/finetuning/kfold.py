"""k-fold cross-validation for any task (`config.kfold=K`): K models on a seeded partition of
train_data (stratified by label for single-label classification, with scikit-learn's
splitters), fold k trained in <workdir>/fold_k as an ordinary, resumable fine-tuning run and
evaluated on its held-out part; each scalar metric is reported per fold and as mean and
standard deviation in <workdir>/kfold.json.
"""

from __future__ import annotations

import json
import logging

import jax
import numpy as np

from flaxlm.config.finetuning import FinetuneConfig
from flaxlm.data import formats
from flaxlm.finetuning import evaluation
from flaxlm.finetuning.run import check, train
from flaxlm.tasks import task_class
from flaxlm.workdir import Workdir

log = logging.getLogger("flaxlm")


def folds(ft: FinetuneConfig, records: list[dict]) -> list[tuple[list[int], list[int]]]:
  """(train indices, held-out indices) of each of ft.kfold folds: a seeded partition of the
  records, stratified by label for single-label classification (scikit-learn's splitters)."""
  from sklearn.model_selection import KFold, StratifiedKFold

  cls = task_class(ft.task_name)
  strata = [cls.stratum(ft.task, ft.columns, r) for r in records]
  if all(s is not None for s in strata):
    split = StratifiedKFold(ft.kfold, shuffle=True, random_state=ft.seed).split(records, strata)
  else:
    split = KFold(ft.kfold, shuffle=True, random_state=ft.seed).split(records)
  return [(list(a), list(b)) for a, b in split]


def cross_validate(ft: FinetuneConfig, workdir, config_json=None) -> dict:
  """Trains ft.kfold models, fold k in <workdir>/fold_k (each a normal fine-tuning workdir,
  resumable), each evaluated on its held-out part of train_data; returns and writes
  <workdir>/kfold.json: every scalar metric per fold with its mean and standard deviation."""
  workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
  check(ft, workdir)
  if ft.eval_data:
    log.info("kfold=%d: eval_data is not used; each fold holds out part of train_data", ft.kfold)
  c = ft.columns
  records = formats.read(ft.train_data, c.word_index, c.tag_index, "train_data")
  per_fold = []
  for k, (train_idx, test_idx) in enumerate(folds(ft, records)):
    log.info(
      "fold %d of %d: %d training and %d held-out records",
      k + 1,
      ft.kfold,
      len(train_idx),
      len(test_idx),
    )
    split = ([records[i] for i in train_idx], [records[i] for i in test_idx])
    result = train(ft, workdir.path / f"fold_{k}", config_json, records=split)
    if result["interrupted"]:
      return {"interrupted": True, "fold": k}
    per_fold.append(
      evaluation.scalars({k2: v for k2, v in result.items() if k2.startswith("eval_")})
    )
  summary = {
    key: {
      "mean": float(np.mean([f[key] for f in per_fold])),
      "std": float(np.std([f[key] for f in per_fold], ddof=1)),
      "folds": [f[key] for f in per_fold],
    }
    for key in per_fold[0]
    if all(key in f for f in per_fold)
  }
  if jax.process_index() == 0:
    (workdir.path / "kfold.json").write_text(json.dumps(summary, indent=1) + "\n")
  return summary
