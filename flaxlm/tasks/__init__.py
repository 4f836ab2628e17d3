"""Fine-tuning tasks: one module each, registered here by name (`config.task.name`).

  classification         single texts or pairs -> a label, labels or a number   classification.py
  token_classification   words -> a tag each (NER, with CoNLL entity scores)     token_classification.py
  relation               a text with two marked entities -> their relation       relation.py
  qa                     a question and a passage -> the answer span (SQuAD)     qa.py
  seq2seq                a source text -> a target text (summaries, translation) seq2seq.py
  sft                    instruction tuning of decoders: prompt -> response      sft.py

A task says how a record becomes an example, which head sits on the backbone (`head_kind`,
`flaxlm.models.param_trees`), the loss, the predictions and how they are scored, the metrics it
reports, the record columns it reads beyond `Columns` and the bounds of its config fields;
see `flaxlm.tasks.base.Task`. A task added outside flaxlm registers with `register(cls)`
(tests/toy_plugins.py).
"""

from __future__ import annotations

from flaxlm.errors import ConfigError
from flaxlm.tasks.base import Columns, Task, config_from_block
from flaxlm.tasks.classification import Classification
from flaxlm.tasks.qa import QA
from flaxlm.tasks.relation import Relation
from flaxlm.tasks.seq2seq import Seq2Seq
from flaxlm.tasks.sft import SFT
from flaxlm.tasks.token_classification import TokenClassification

TASKS: dict[str, type[Task]] = {
  "classification": Classification,
  "token_classification": TokenClassification,
  "relation": Relation,
  "qa": QA,
  "seq2seq": Seq2Seq,
  "sft": SFT,
}

__all__ = ["TASKS", "Columns", "Task", "config_from_block", "register", "task_class"]


def register(cls: type[Task]) -> type[Task]:
  """Adds a task: a module of its own and this call (usable as a class decorator), no other
  file. Its config class, head, metrics, columns and bounds are what it declares."""
  TASKS[cls.name] = cls
  return cls


def task_class(name: str) -> type[Task]:
  if name not in TASKS:
    raise ConfigError(f"task.name={name!r} is unknown; known tasks: {sorted(TASKS)}")
  return TASKS[name]
