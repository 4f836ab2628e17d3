"""How a fine-tuning model's parameter tree is laid out: which parameters are its backbone and
which its head. The one place that knows it; freezing, transfer (`init_from`), export and
the adapters and masks of later methods ask here instead of guessing from the tree.

A task declares its head (`Task.head_kind`, or `Task.head_for(family)` where it depends on
the family):

  'sequence' | 'token'   {'backbone': <the backbone's own tree>, 'classifier': {...}}
  'span'                 {'backbone': ..., 'qa_outputs': {...}}   (Hugging Face's names)
  None                   the backbone's own tree: the task trains the family's language-model
                         head (seq2seq, SFT, text-to-text classification), the untied output
                         projection `lm_head` (none when tied to the token embedding)

Paths are tuples of names, as `flax.traverse_util.flatten_dict` gives them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from flax import traverse_util

from flaxlm.errors import ConfigError

BACKBONE = "backbone"
HEAD_NAMES = {"sequence": "classifier", "token": "classifier", "span": "qa_outputs"}
LM_HEAD = "lm_head"  # the untied output projection of every family (models/transformer.py)

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Layout:
  """The tree layout of a task with head kind `head` (None: the family's LM head)."""

  head: str | None

  def __post_init__(self):
    if self.head is not None and self.head not in HEAD_NAMES:
      raise ConfigError(f"head={self.head!r}; choose None or one of {sorted(HEAD_NAMES)}")

  @property
  def head_name(self) -> str:
    """The head's top-level name in the task tree ('lm_head' for the family's own)."""
    return HEAD_NAMES[self.head] if self.head else LM_HEAD

  @property
  def prefix(self) -> Path:
    """Where the backbone's own tree sits in the task tree."""
    return (BACKBONE,) if self.head else ()

  def is_head(self, path: Path) -> bool:
    if self.head:
      return path[:1] == (self.head_name,)
    return LM_HEAD in path  # ('lm_head', 'kernel') in a GPT, ('decoder', 'lm_head', ...) in T5

  def backbone_path(self, path: Path) -> Path:
    """A backbone parameter's path in the task tree."""
    return (*self.prefix, *path)

  def backbone(self, params: Mapping) -> Mapping:
    """The backbone's own tree (what a pretraining checkpoint or a converter holds)."""
    return params[BACKBONE] if self.head else params

  def split(self, params: Mapping) -> tuple[dict, dict]:
    """(backbone, head) flat trees {path in the task tree: leaf}."""
    flat = traverse_util.flatten_dict(params)
    head = {k: v for k, v in flat.items() if self.is_head(k)}
    return {k: v for k, v in flat.items() if k not in head}, head

  def merge(self, *parts: Mapping) -> dict:
    """The nested task tree of flat parts (the inverse of `split`)."""
    flat = {}
    for part in parts:
      flat.update(part)
    return traverse_util.unflatten_dict(flat)

  def frozen(self, path: Path) -> bool:
    """freeze_backbone's predicate: everything but the head."""
    return not self.is_head(path)

  def check_freezable(self, params: Mapping, task: str, family: str) -> None:
    """freeze_backbone must leave something to train."""
    if not any(self.is_head(k) for k in traverse_util.flatten_dict(params)):
      raise ConfigError(
        f"freeze_backbone=True would freeze every parameter: task {task!r} trains model family "
        f"{family!r}'s own language-model head, which this model ties to its token embedding; "
        "set --config.freeze_backbone=false (or train a model with tie_embeddings=False)"
      )
