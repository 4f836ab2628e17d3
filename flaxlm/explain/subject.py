"""The model `flaxlm.explain` looks into: any workdir (pretraining, fine-tuning) or Hugging Face
folder ('hf:<dir>'), one text made into the batch that model takes, and one forward pass that
fills the collections asked for (attention maps, embedding probes).

A fine-tuned model reads the text as its task frames it (the task's own example: [CLS] a [SEP]
b [SEP], words for a tagger, source and target for a text-to-text model); a backbone reads it
as `flaxlm.encode` frames it, and an encoder-decoder reads `target` on its decoder side.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from flaxlm.errors import ConfigError
from flaxlm.models import registry

# The columns a task may read the text from; the task takes those it declares.
_TEXT_COLUMNS = ("text", "context", "prompt", "question")


@dataclasses.dataclass
class Subject:
  """A model, its parameters and tokenizer, and what it is."""

  module: Any  # flax module: a task model (head on a backbone) or the backbone alone
  params: Any
  tokenizer: Any
  family: registry.Family
  model_config: Any
  task: Any = None  # flaxlm.tasks.Task of a fine-tuned model; None: a backbone
  source: str = ""  # the workdir or folder it came from

  @property
  def has_head(self) -> bool:
    """Its output is a task head's logits: (B, C) per text, or (B, T, C) per token."""
    return self.task is not None and self.task.head_for(self.family) is not None

  @property
  def attention_impl(self) -> str:
    return getattr(self.model_config, "attention_impl", "")


def load(workdir: str, task: str = "", num_labels: int = 0) -> Subject:
  """A pretraining or fine-tuning workdir, or 'hf:<dir>' (with `task`: the folder's model
  under that task's head, as `flaxlm.load_hf(dir, task=...)` gives it)."""
  from flaxlm.finetuning import load as finetuned
  from flaxlm.pretraining import load as pretrained

  path = str(workdir)
  if path.startswith("hf:") and task:
    return _from_model(finetuned.load_hf(path[3:], task=task, num_labels=num_labels), path)
  if not path.startswith("hf:") and finetuned.workdir_kind(path) == "finetune":
    return _from_model(finetuned.load(path), path)
  trainable, params, tokenizer = pretrained.load_trained(path)
  family = registry.family_of(pretrained.saved_family(path))
  return Subject(trainable.model, params, tokenizer, family, trainable.model.config, None, path)


def _from_model(model, source: str) -> Subject:
  family = registry.family_of(model.family)
  return Subject(model.model, model.params, model.tokenizer, family, model.model_config,
                 model.task, source)  # fmt: skip


def encode(subject: Subject, text: str, pair: str | None = None, target: str | None = None):
  """(batch of one row, numpy; the token ids of each side: {'inputs': ..., 'decoder_inputs':
  ...} for the encoder-decoder, {'inputs': ...} otherwise)."""
  if subject.task is not None:
    batch = _task_batch(subject.task, text, pair, target)
  elif subject.family.kind == "encdec":
    batch = _encdec_batch(subject.tokenizer, text, target)
  else:
    from flaxlm.tasks.base import encode_batch

    limit = getattr(subject.model_config, "max_len", 0) or 512
    batch = encode_batch(subject.tokenizer, [text], None if pair is None else [pair], limit)
    batch = {k: np.asarray(v) for k, v in batch.items()}
  sides = [k for k in ("inputs", "decoder_inputs") if k in batch]
  return batch, {k: batch[k][0] for k in sides}


def _task_batch(task, text: str, pair: str | None, target: str | None) -> dict:
  from flaxlm.data import formats

  columns = task.columns
  record = {formats.WHERE: "--text", columns.words: text.split()}

  def put(column: str, value) -> None:  # a column may name alternatives: 'sentence|content'
    record.update({name: value for name in column.split("|") if name})

  for name in _TEXT_COLUMNS:
    put(getattr(columns, name), text)
  if pair is not None and not columns.text_pair:
    raise ConfigError("--text_pair: this model's task reads single texts (columns.text_pair='')")
  if pair is not None:
    put(columns.text_pair, pair)
  if target is not None:
    put(columns.target.split(",")[0], target)
  example = task.examples(record)[0]
  return {k: np.asarray(v)[None] for k, v in example.items()}


def _encdec_batch(tokenizer, text: str, target: str | None) -> dict:
  from flaxlm.objectives.text_to_text import pack_pairs, seq2seq_ids

  if target is None:
    raise ConfigError(
      "an encoder-decoder's decoder and cross-attention read the output text: give it as "
      "--target='<output>'"
    )
  start, eos, pad = seq2seq_ids(tokenizer, "text_to_text")
  source, out = tokenizer.encode(text), tokenizer.encode(target)
  row = pack_pairs([(source, out)], len(source) + 1, len(out) + 1, start, eos, pad)
  return {k: v[None] for k, v in row.items()}


def forward(subject: Subject, batch: dict, variables: dict | None = None, mutable=()):
  """One deterministic forward pass: (output, the mutable collections). The output is the
  head's logits, a backbone's features, or an encoder-decoder's vocabulary logits."""
  from flaxlm.objectives.text_to_text import seq2seq_logits

  variables = {"params": subject.params, **(variables or {})}
  module, mutable = subject.module, list(mutable)
  if "decoder_inputs" in batch:  # teacher-forced encoder-decoder
    extra = {k: v for k, v in variables.items() if k != "params"}
    bound = _WithVariables(module, extra, mutable)
    return seq2seq_logits(bound, subject.params, batch), bound.state
  if subject.has_head:
    return module.apply(variables, batch, deterministic=True, mutable=mutable)
  features = subject.family.features
  return module.apply(variables, batch, True, method=features, mutable=mutable)


class _WithVariables:
  """`module.apply` with extra collections and `mutable`, for callers that call
  `model.apply({'params': p}, ...)` themselves (seq2seq_logits); the state lands in `.state`."""

  def __init__(self, module, extra: dict, mutable: list):
    self.module, self.extra, self.mutable, self.state = module, extra, mutable, {}

  def apply(self, variables, *args, **kwargs):
    out, self.state = self.module.apply(
      {**variables, **self.extra}, *args, mutable=self.mutable, **kwargs
    )
    return out


def token_labels(tokenizer, ids) -> list[str]:
  """A readable label per token id: '[CLS]'-style names for special ids, else the piece."""
  names = {int(i): f"[{n.upper()}]" for n, i in getattr(tokenizer, "special_ids", {}).items()}
  out = []
  sp = getattr(tokenizer, "sp", None)  # SentencePiece: its pieces as such ('▁list', '▁')
  for i in np.asarray(ids).tolist():
    raw = sp.id_to_piece(int(i)) if sp is not None else tokenizer.decode([int(i)])
    out.append(names.get(int(i)) or raw.strip() or ("␣" if raw else f"<{int(i)}>"))
  return out
