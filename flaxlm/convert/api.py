"""`load_hf` and `export_hf`: a Hugging Face model folder <-> a flaxlm model config, parameter
tree and tokenizer, through the family converters (one module per architecture):

  architecture   model_type        flaxlm family   module
  gpt2           gpt2              gpt             gpt2.py
  llama          llama, mistral    gpt             llama.py
  bert/roberta   bert, roberta     bert            bert.py
  t5             t5, mt5           encdec          t5.py

Task models (transformers' *ForSequenceClassification / *ForTokenClassification /
*ForQuestionAnswering) map to flaxlm's `TaskModel` tree {'backbone': ..., 'classifier' |
'qa_outputs': ...} (`flaxlm.models.heads`).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import jax
import numpy as np
from flax import traverse_util

from flaxlm.convert import bert, files, gpt2, llama, t5, tokenizer_export, tree
from flaxlm.convert.tokenizer import HFTokenizer, from_directory
from flaxlm.errors import CheckpointMismatchError, ConfigError
from flaxlm.models import heads, param_trees, registry

log = logging.getLogger("flaxlm")

ARCHS = {"gpt2": gpt2, "llama": llama, "bert": bert, "roberta": bert, "t5": t5}
MODEL_TYPES = {t: m for m in (gpt2, llama, bert, t5) for t in m.MODEL_TYPES}
TASKS = ("bare", "sequence", "token", "span")  # None: the language-model head


@dataclasses.dataclass
class Imported:
  """A Hugging Face checkpoint as flaxlm sees it."""

  family: str  # flaxlm's model family: 'gpt' | 'bert' | 'encdec'
  model_config: object  # that family's frozen config (GPTConfig, BertConfig, EncDecConfig)
  params: dict  # numpy float32 tree: the model's own, or {'backbone', <head>} with a task
  tokenizer: HFTokenizer | None
  architecture: str  # 'gpt2' | 'llama' | 'bert' | 'roberta' | 't5'
  task: str | None = None  # None | 'sequence' | 'token' | 'span' (a fine-tuned checkpoint)
  labels: list[str] | None = None  # the task's labels, by id (config.json id2label)
  initialized: list[str] = dataclasses.field(default_factory=list)  # not in the checkpoint

  @property
  def backbone(self) -> dict:
    return param_trees.Layout(self.task).backbone(self.params)

  def model(self):
    """The flaxlm module these params belong to (a TaskModel for a task checkpoint)."""
    return _module(self.family, self.model_config, self.task, self.params)


def _module(family: str, config, task: str | None, params: dict):
  model = registry.build_model(family, config)
  if not task:
    return model
  name = param_trees.HEAD_NAMES[task]
  outputs = params[name]["kernel"].shape[-1]
  return heads.TaskModel(
    model, registry.family_of(family).features, task, outputs, config.dropout_rate
  )


def load_hf(directory: str | pathlib.Path, pad_vocab_to: int = 1) -> Imported:
  """Imports a local Hugging Face model folder (config.json + safetensors).

  `pad_vocab_to` > 1 rounds the vocabulary up with zero rows (for evenly sharded
  embeddings); their logits are 0, not -inf, so mask them when sampling from a decoder."""
  directory = pathlib.Path(directory)
  hf = files.read_config(directory)
  model_type = hf.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ConfigError(
      f"{directory}/config.json: model_type={model_type!r}; flaxlm imports {sorted(MODEL_TYPES)}"
    )
  module = MODEL_TYPES[model_type]
  tensors = files.read_weights(directory)
  converted = module.import_checkpoint(
    hf, tensors, registry.padded_vocab(hf["vocab_size"], pad_vocab_to)
  )
  if converted.unused:
    raise CheckpointMismatchError(
      f"{directory}: {len(converted.unused)} weights have no place in flaxlm's "
      f"{module.FAMILY} model (an architecture variant flaxlm lacks?): {converted.unused[:8]}"
    )
  model = _module(module.FAMILY, converted.config, converted.task, converted.params)
  params, initialized = tree.complete(converted.params, model)
  if initialized:
    log.warning(
      "%s lacks %d parameters; freshly initialized: %s", directory, len(initialized), initialized
    )
  arch = getattr(module, "ARCH", model_type)  # bert.py serves 'bert' and 'roberta'
  return Imported(
    family=module.FAMILY,
    model_config=converted.config,
    params=params,
    tokenizer=from_directory(directory, model_type),
    architecture=arch,
    task=converted.task,
    labels=_labels(hf, converted),
    initialized=initialized,
  )


def _labels(hf: dict, converted: tree.Converted) -> list[str] | None:
  if converted.task not in ("sequence", "token"):
    return None
  n = converted.params["classifier"]["kernel"].shape[-1]
  names = {int(k): v for k, v in (hf.get("id2label") or {}).items()}
  return [str(names.get(i, f"LABEL_{i}")) for i in range(n)]


def architecture(family: str, config, tokenizer=None) -> str:
  """The transformers architecture a flaxlm model exports as ('gpt2', 'roberta', ...)."""
  if family in ARCHS:
    arch = family
  else:
    candidates = registry.family_of(family).hf_architectures
    if not candidates:
      raise ConfigError(
        f"family={family!r} has no transformers counterpart; flaxlm exports "
        f"{sorted(f for f, fam in registry.FAMILIES.items() if fam.hf_architectures)}"
      )
    source = getattr(tokenizer, "source", "")  # a tokenizer imported from one of them
    fitting = [a for a in candidates if ARCHS[a].fits(config)] or list(candidates)
    arch = source if source in fitting else fitting[0]
  if not ARCHS[arch].fits(config):
    raise ConfigError(
      f"a {type(config).__name__} with position={config.position!r} does not export as {arch} "
      "(gpt2: learned positions, llama: rope, t5: relative; the original Transformer has no "
      "transformers counterpart)"
    )
  return arch


def _class_name(arch: str, config, task: str | None) -> str:
  classes = ARCHS[arch].CLASSES.get(arch, ARCHS[arch].CLASSES)
  key = "nsp" if task is None and getattr(config, "nsp_head", False) and "nsp" in classes else task
  if key not in classes:
    raise ConfigError(
      f"task={task!r}: a {arch} model exports as {sorted(str(k) for k in classes)} (None: its "
      "language-model head); transformers has no exact counterpart of this head"
    )
  return classes[key]


def _vocab_tables(params: dict) -> list[tuple[np.ndarray, int]]:
  """Every (array, vocabulary axis) of a tree, embedding first."""
  flat = traverse_util.flatten_dict(params)
  axes = {"embedding": 0, "kernel": 1, "mlm_bias": 0}
  picks = [
    (v, axes[k[-1]])
    for k, v in flat.items()
    if k[-2:] in (("embed", "embedding"), ("embedder", "embedding"), ("lm_head", "kernel"))
    or k[-1] == "mlm_bias"
  ]
  return sorted(picks, key=lambda p: p[1])


def export_hf(
  directory: str | pathlib.Path,
  family: str,
  model_config,
  params: dict,
  tokenizer=None,
  task: str | None = None,
  labels: list[str] | None = None,
) -> str:
  """Writes a Hugging Face model folder (config.json, model.safetensors, tokenizer files)
  that transformers loads without missing or unexpected weights. Returns its class name.

  `family`: flaxlm's ('gpt', 'bert', 'encdec') or an architecture ('gpt2', 'llama', 'bert',
  'roberta', 't5'). `task`: None (the language-model head), 'bare' (the backbone alone),
  or the head of a fine-tuned {'backbone', 'classifier' | 'qa_outputs'} tree: 'sequence',
  'token', 'span' (a task's `head_for(family)`; `flaxlm.models.param_trees`). `labels` name the
  classifier's outputs. Trailing vocabulary rows that are zero in every vocabulary table
  (what import padding adds) are dropped, down to the tokenizer's size."""
  config, tensors, class_name = hf_tensors(family, model_config, params, tokenizer, task, labels)
  directory = pathlib.Path(directory)
  files.write_model(directory, config, tensors)
  if tokenizer is not None:
    tokenizer_export.write(directory, tokenizer, architecture(family, model_config, tokenizer))
  return class_name


def hf_tensors(family: str, model_config, params: dict, tokenizer=None, task=None, labels=None):
  """(config.json fields, {HF name: array}, class name) of `export_hf`, in memory."""
  if task is not None and task not in TASKS:
    raise ConfigError(f"task={task!r}; choose None (the language-model head) or one of {TASKS}")
  arch = architecture(family, model_config, tokenizer)
  params = tree.unstack_layers(jax.device_get(params))
  headed = task not in (None, "bare")
  if headed and param_trees.BACKBONE not in params:
    raise ConfigError(f"task={task!r} needs a fine-tuned tree {{'backbone': ..., <head>: ...}}")
  if task == "bare" and param_trees.BACKBONE in params:
    params = params[param_trees.BACKBONE]
  backbone = param_trees.Layout(task if headed else None).backbone(params)
  keep = tokenizer.vocab_size if tokenizer is not None else 0
  vocab = tree.used_vocab(_vocab_tables(backbone), keep)
  specials = getattr(tokenizer, "special_ids", {}) or {}
  class_name = _class_name(arch, model_config, task)
  config, tensors = ARCHS[arch].export_checkpoint(
    model_config, params, task, vocab, arch, specials.get("pad")
  )
  config.update(architectures=[class_name], dtype="float32")
  for name in ("pad", "bos", "eos"):
    config.setdefault(f"{name}_token_id", specials.get(name))
  head = param_trees.HEAD_NAMES.get(task)
  if task in ("sequence", "token"):
    n = params[head]["kernel"].shape[-1]
    names = list(labels) if labels else [f"LABEL_{i}" for i in range(n)]
    if len(names) != n:
      raise ConfigError(f"{len(names)} labels for a head with {n} outputs")
    config["id2label"] = {str(i): name for i, name in enumerate(names)}
    config["label2id"] = {name: i for i, name in enumerate(names)}
  return config, tensors, class_name
