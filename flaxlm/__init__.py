"""flaxlm: pretrain and fine-tune GPT, BERT/RoBERTa and T5-style transformers in JAX/Flax.

The curated API for JAX code that imports flaxlm (the entry points train.py, finetune.py and
generate.py use the same functions):

  import flaxlm

  c = flaxlm.finetune_config()                      # every key, with its default
  flaxlm.use_model_preset(c, "lstm", "bilstm")      # or c.init_from = "<a train.py workdir>"
  c.tokenizer.kind = "word"
  c.train_data, c.eval_data = "tsv:train.tsv", "tsv:dev.tsv"
  c.columns.text = "sentence"
  result = flaxlm.finetune(c, "/tmp/sst2")           # trains, evaluates the best checkpoint
  model = flaxlm.load("/tmp/sst2")
  flaxlm.predict(model, [{"sentence": "a gripping, funny film"}])
  batch = flaxlm.encode(model, ["a gripping, funny film"])  # framed, padded, with its mask

Modules: models (GPT, Bert, EncoderDecoder, BiLSTM, TaskModel), tasks (TASKS), the training
loop (`flaxlm.train.loop.run`), sampling and sequence-to-sequence decoding; for a model of
one's own made smaller, pruning masks as the last link of an optax chain (`prune_updates`)
and the distillation loss of a task beside its teacher (`distillation_loss`). Looking into a
model: `attention_maps(flaxlm.explain.load(workdir), text)` and `attribute(...)` (token
attributions); `hyperparameter_search` runs an Optuna study over any config (flaxlm.search).
"""

from __future__ import annotations

from flaxlm.config import default_config, model_preset
from flaxlm.config.finetuning import finetune_config, task_block
from flaxlm.config.finetuning import with_model_preset as use_model_preset
from flaxlm.decode.sampling import SamplingConfig, sample_text
from flaxlm.models.bert import PRESETS as BERT_PRESETS
from flaxlm.models.bert import Bert, BertConfig
from flaxlm.models.encdec import PRESETS as ENCDEC_PRESETS
from flaxlm.models.encdec import EncDecConfig, EncoderDecoder
from flaxlm.models.gpt import GPT, GPTConfig
from flaxlm.models.gpt import PRESETS as GPT_PRESETS
from flaxlm.models.heads import TaskModel
from flaxlm.models.lstm import BiLSTM, LSTMConfig
from flaxlm.models.registry import FAMILIES
from flaxlm.tasks import TASKS, Columns, Task

__all__ = [
  "BERT_PRESETS",
  "ENCDEC_PRESETS",
  "FAMILIES",
  "GPT",
  "GPT_PRESETS",
  "TASKS",
  "Bert",
  "BertConfig",
  "BiLSTM",
  "Columns",
  "EncDecConfig",
  "EncoderDecoder",
  "GPTConfig",
  "LSTMConfig",
  "SamplingConfig",
  "Task",
  "TaskModel",
  "TrainState",
  "Trainable",
  "attention_maps",
  "attribute",
  "default_config",
  "distillation_loss",
  "encode",
  "evaluate",
  "finetune",
  "finetune_config",
  "hyperparameter_search",
  "load",
  "model_preset",
  "predict",
  "pretrain",
  "prune_updates",
  "sample_text",
  "task_block",
  "training_loop",
  "use_model_preset",
]


# The engine loads on first use, so that reading a config (flaxlm.config) imports no loop,
# step or checkpoint code.
_ENGINE = {
  "training_loop": ("flaxlm.train.loop", "run"),
  "prune_updates": ("flaxlm.nn.pruning", "prune_updates"),  # masks as an optax link
  "distillation_loss": ("flaxlm.finetuning.distill", "loss"),
  "Trainable": ("flaxlm.train.steps", "Trainable"),
  "TrainState": ("flaxlm.train.steps", "TrainState"),
  "attention_maps": ("flaxlm.explain", "attention_maps"),  # (layers, heads, T, S) per kind
  "attribute": ("flaxlm.explain", "attribute"),  # integrated gradients over the embeddings
  "hyperparameter_search": ("flaxlm.search", "search"),  # an Optuna study of any config
}


def __getattr__(name: str):
  if name in _ENGINE:
    import importlib

    module, attr = _ENGINE[name]
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f"module 'flaxlm' has no attribute {name!r}")


def pretrain(config, workdir: str) -> dict:
  """Pretrains (train.py's job) from a config made with `default_config()`; resumes."""
  from flaxlm import config as run_config
  from flaxlm.pretraining import run as pretraining

  run = config if isinstance(config, run_config.RunConfig) else run_config.from_config_dict(config)
  json = run_config.dump_config_json(config) if hasattr(config, "to_json_best_effort") else None
  return pretraining.train(run, workdir, json)


def finetune(config, workdir: str) -> dict:
  """Fine-tunes (finetune.py's job) from a config made with `finetune_config()`; resumes.
  Returns the best checkpoint's dev metrics, with the trained `model`."""
  from flaxlm import config as run_config
  from flaxlm.config import finetuning as ft_config
  from flaxlm.finetuning import run as finetuning

  ft = (
    config if isinstance(config, ft_config.FinetuneConfig) else ft_config.from_config_dict(config)
  )
  json = run_config.dump_config_json(config) if hasattr(config, "to_json_best_effort") else None
  return finetuning.train(ft, workdir, json)


def load(workdir: str, mesh=None, task: str = "", num_labels: int = 0, labels=None):
  """A trained workdir: a fine-tuning run's best model (`finetuning.Model`: task, trainable,
  params, tokenizer), or a pretraining run's (trainable, params, tokenizer). 'hf:<dir>': a
  Hugging Face model folder, imported (`flaxlm.convert.Imported`), or with `task` (and
  `num_labels` or `labels` for a new head) a `Model` ready for `predict` and `evaluate`."""
  from flaxlm.finetuning import load as finetuned
  from flaxlm.pretraining import load as pretrained

  if str(workdir).startswith("hf:"):
    return finetuned.load_hf(str(workdir)[3:], task, num_labels, labels, mesh)

  if finetuned.workdir_kind(workdir) == "finetune":
    return finetuned.load(workdir, mesh)
  return pretrained.load_trained(workdir, mesh)


def predict(model, records: list[dict], batch_size: int = 32) -> list[dict]:
  """The task's output for each record (dicts with the model's columns), in order."""
  from flaxlm.finetuning import load as finetuned

  return finetuned.predict_records(model, records, batch_size)


def evaluate(model, records: list[dict], batch_size: int = 32) -> dict:
  """The task's metrics of a loaded model on labelled records."""
  from flaxlm.finetuning import load as finetuned

  return finetuned.evaluate_records(model, records, batch_size)


def encode(model, texts: list[str], pairs: list[str] | None = None, max_len: int = 0) -> dict:
  """Texts (or text pairs) as the batch a loaded model takes, framed as its tasks frame them
  ([CLS] a [SEP] b [SEP] with a BERT-style tokenizer; a (SEP|EOS b) EOS otherwise) and
  padded: {'inputs', 'segment_ids' (1 on tokens, 0 on padding: the attention mask),
  'type_ids'}, (B, T) int32. `model`: what `flaxlm.load` returns (a fine-tuned Model, a
  pretraining (trainable, params, tokenizer), an imported Hugging Face folder) or a tokenizer;
  `max_len` truncates longest-first (0: the task's max_len, else the model's, else 512)."""
  from flaxlm.tasks.base import encode_batch

  if isinstance(model, tuple):  # a pretraining workdir: (trainable, params, tokenizer)
    tokenizer, task, config = model[2], None, model[0].model.config
  else:
    tokenizer = getattr(model, "tokenizer", model)
    task, config = getattr(model, "task", None), getattr(model, "model_config", None)
  limit = max_len or getattr(getattr(task, "config", None), "max_len", 0)
  limit = limit or getattr(config, "max_len", 0) or 512
  return encode_batch(tokenizer, list(texts), None if pairs is None else list(pairs), limit)
