"""Sequence classification and regression: single texts or text pairs -> one label (binary
or multi-class), a set of labels (multi-label) or a number (regression, STS-B style).

Encoders classify the pooled [CLS] state (BERT's pooler), decoders the state at the last
token (which has read the whole text), the BiLSTM its mean state; encoder-decoders answer in
text: each label is a word sequence (`label_words`), trained with the seq2seq loss and
predicted by scoring every label's words and taking the likeliest (T5's text-to-text).
Metrics come from scikit-learn (and SciPy for correlations).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxlm.data.formats import WHERE, field, has_field
from flaxlm.errors import ConfigError, DataError
from flaxlm.models.heads import TaskModel
from flaxlm.nn import losses
from flaxlm.tasks import metrics
from flaxlm.tasks.base import Task, TaskConfig, bounded, encode_inputs


@dataclasses.dataclass(frozen=True)
class ClassificationConfig(TaskConfig):
  problem: str = "single_label"  # single_label | multi_label | regression
  max_len: int = bounded(128, 1, why="tokens per example, specials included")
  labels: tuple = ()  # the label order; () = the training data's labels, sorted
  label_separator: str = ","  # multi_label: how one field lists several labels
  # multi_label: a label is predicted at this probability
  threshold: float = bounded(0.5, 0.0, 1.0, why="a probability")
  class_weights: str = ""  # '' | 'balanced' | one weight per label, comma-separated
  label_words: tuple = ()  # encoder-decoders: the words of each label (default: the label)
  dropout_rate: float = bounded(0.1, 0.0, 1.0, open_high=True, why="before the head")
  # BiLSTM with a char CNN: characters read per word
  max_chars: int = bounded(16, 1, why="characters the char CNN reads per word")
  # Training batches without padding: a step's examples share max_len-wide rows, each
  # attending only to itself (BERT-style encoders; `pipeline.pack_collate`). Same loss,
  # fewer tokens computed when texts are much shorter than max_len.
  padding_free: bool = False

  def __post_init__(self):
    super().__post_init__()
    if self.problem not in ("single_label", "multi_label", "regression"):
      raise ConfigError(
        f"task.problem={self.problem!r}; choose 'single_label', 'multi_label' or 'regression'"
      )
    if self.problem == "multi_label" and not self.label_separator:
      raise ConfigError("task.label_separator='' cannot split a multi_label field; use e.g. ','")
    explicit_weights(self.class_weights)  # its syntax, now; its length needs the labels


def explicit_weights(spec: str) -> np.ndarray | None:
  """task.class_weights as weights (None for '' and 'balanced'): one positive number per
  label, comma-separated."""
  if not spec or spec == "balanced":
    return None
  try:
    weights = np.asarray([float(x) for x in spec.split(",")], np.float32)
  except ValueError:
    weights = np.zeros(0, np.float32)
  if not weights.size or weights.min() <= 0:
    raise ConfigError(
      f"task.class_weights={spec!r}: use 'balanced' or one positive weight per label, "
      "comma-separated (e.g. '1,3')"
    )
  return weights


class Classification(Task):
  name = "classification"
  Config = ClassificationConfig
  metric = "eval_accuracy"
  head_kind = "sequence"

  @classmethod
  def head_for(cls, family) -> str | None:
    return None if family.kind == "encdec" else cls.head_kind  # encoder-decoders: text labels

  def __init__(self, *args):
    super().__init__(*args)
    self.text_to_text = self.family.kind == "encdec"
    self.chars = self.config.max_chars if getattr(self.model_config, "char_dim", 0) else 0
    self.pad_values = {"inputs": 0, "segment_ids": 0, "type_ids": 0, "chars": 0}

  # --- set up ---------------------------------------------------------------------------
  @classmethod
  def metric_for(cls, config) -> str:
    return "eval_pearson" if config.problem == "regression" else cls.metric

  @classmethod
  def metric_names(cls, config) -> tuple[str, ...]:
    if config.problem == "regression":
      return ("loss", "pearson", "spearman", "mse", "mae")
    scores = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_micro", "roc_auc")
    # single_label: MCC always, ROC and PR AUC with two labels (both occurring)
    return ("loss", *scores) + (("mcc", "pr_auc") if config.problem == "single_label" else ())

  @classmethod
  def stratum(cls, config, columns, record) -> str | None:
    if config.problem != "single_label":
      return None
    return str(field(record, columns.label, "label")).strip()

  @classmethod
  def fit_labels(cls, config, columns, records) -> list[str] | None:
    if config.problem == "regression":
      return None
    if config.labels:
      return [str(x) for x in config.labels]
    seen = set()
    for r in records:
      seen.update(_label_names(r, columns.label, config))
    if len(seen) < 2 and config.problem == "single_label":
      raise DataError(f"the training data has {len(seen)} label ({sorted(seen)}); need 2 or more")
    return sorted(seen, key=_natural)

  def check(self) -> None:
    c = self.config
    if self.text_to_text and c.problem != "single_label":
      raise ConfigError("encoder-decoder classification is single_label (text-to-text)")
    if c.label_words and len(c.label_words) != len(self.labels or ()):
      raise ConfigError(
        f"task.label_words has {len(c.label_words)} entries for {len(self.labels)} labels"
      )
    if c.class_weights and c.problem != "single_label":
      raise ConfigError("task.class_weights applies to single_label classification")
    self.class_weights()  # parse now
    if not self.text_to_text:  # the specials encode_inputs frames an empty text (pair) with
      pair = "" if self.columns.text_pair else None
      self.check_room("max_len", len(encode_inputs(self.tokenizer, "", pair, 1 << 20)["inputs"]))
    if c.padding_free and not self.family.reads_packed_rows:
      raise ConfigError(
        f"task.padding_free=True packs examples into shared rows, which model family "
        f"{self.family.name!r} does not read; use a BERT-style encoder or task.padding_free=False"
      )

  def class_weights(self) -> np.ndarray | None:
    weights = explicit_weights(self.config.class_weights)
    if weights is None:
      return None
    if len(weights) != len(self.labels):
      raise ConfigError(
        f"task.class_weights has {len(weights)} weights for {len(self.labels)} labels {self.labels}"
      )
    return weights

  def set_balanced_weights(self, records: list[dict]) -> None:
    """'balanced': n_examples / (n_labels * count(label)), from the training records."""
    if self.config.class_weights != "balanced":
      return
    counts = np.zeros(len(self.labels))
    for r in records:
      counts[self._label_index(r)] += 1
    weights = len(records) / (len(self.labels) * np.maximum(counts, 1))
    self.config = dataclasses.replace(
      self.config, class_weights=",".join(f"{w:.6g}" for w in weights)
    )

  # --- data -------------------------------------------------------------------------------
  def key(self, record):
    text = field(record, self.columns.text, "text")
    pair = field(record, self.columns.text_pair, "text_pair") if self.columns.text_pair else None
    return (text, pair)

  def example(self, record: dict) -> dict:
    text, pair = self.key(record)
    if self.text_to_text:
      return self._text_to_text_example(record, text, pair)
    out = encode_inputs(self.tokenizer, str(text), None if pair is None else str(pair),
                        self.config.max_len, self.chars)  # fmt: skip
    out["labels"] = self.gold(record) if has_field(record, self.columns.label) else self._no_label()
    out["example_weight"] = np.float32(1.0)
    return out

  def _no_label(self):
    """A placeholder for unlabelled records (predict mode)."""
    if self.config.problem == "regression":
      return np.float32(0)
    if self.config.problem == "multi_label":
      return np.zeros(len(self.labels), np.float32)
    return np.int32(0)

  def gold(self, record):
    c = self.config
    if c.problem == "regression":
      value = field(record, self.columns.label, "label")
      try:
        return np.float32(value)
      except (TypeError, ValueError):
        raise DataError(f"{record[WHERE]}: label {value!r} is not a number") from None
    if c.problem == "multi_label":
      hot = np.zeros(len(self.labels), np.float32)
      for name in _label_names(record, self.columns.label, c):
        hot[self._index(name, record)] = 1.0
      return hot
    return np.int32(self._label_index(record))

  def _label_index(self, record) -> int:
    return self._index(str(field(record, self.columns.label, "label")).strip(), record)

  def _index(self, name: str, record) -> int:
    try:
      return self.labels.index(name)
    except ValueError:
      raise DataError(
        f"{record[WHERE]}: label {name!r} is not one of the training labels {self.labels}"
      ) from None

  def train_collate(self, row_multiple: int, microbatches: int = 1):
    if not self.config.padding_free:
      return None
    from flaxlm.data import pipeline  # Grain: not loaded by reading a config

    return pipeline.pack_collate(self.pad_values, self.config.max_len, row_multiple, microbatches)

  # --- model ------------------------------------------------------------------------------
  def model(self, backbone):
    if self.text_to_text:
      return backbone
    n = 1 if self.config.problem == "regression" else len(self.labels)
    return TaskModel(backbone, self.family.features, "sequence", n, self.config.dropout_rate)

  def loss(self, model, params, batch, rng, deterministic, loss_config):
    if self.text_to_text:
      from flaxlm.objectives.text_to_text import seq2seq

      return seq2seq(model, params, batch, rng, deterministic, loss_config)
    logits = self.forward(model, params, batch, rng, deterministic)
    return self.loss_from_logits(logits, batch, loss_config)

  def distillable(self) -> bool:
    return not self.text_to_text and self.config.problem == "single_label"

  def soft_target_weights(self, batch):
    return batch["example_weight"]

  def loss_from_logits(self, logits, batch, loss_config) -> dict:
    w = batch["example_weight"]
    problem = self.config.problem
    if problem == "regression":
      err = jnp.square(logits[:, 0] - batch["labels"])
      return {"loss_sum": jnp.sum(err * w), "weight_sum": jnp.sum(w), "mse_sum": jnp.sum(err * w)}
    if problem == "multi_label":
      bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch["labels"]), axis=-1)
      correct = jnp.all((logits > 0) == (batch["labels"] > 0.5), axis=-1)
      return {
        "loss_sum": jnp.sum(bce * w),
        "nll_sum": jnp.sum(bce * w),
        "correct_sum": jnp.sum(correct * w),
        "weight_sum": jnp.sum(w),
      }
    weights = self.class_weights()
    if weights is not None:  # as torch's CrossEntropyLoss(weight=...): a weighted mean
      w = w * jnp.asarray(weights)[batch["labels"]]
    return losses.cross_entropy(
      logits[:, None], batch["labels"][:, None], w[:, None], loss_config.label_smoothing
    )

  def predict(self, model, params, batch) -> dict:
    if self.text_to_text:
      return {"scores": self._label_scores(model, params, batch)}
    logits = model.apply({"params": params}, batch)
    if self.config.problem == "regression":
      return {"value": logits[:, 0]}
    if self.config.problem == "multi_label":
      return {"probs": jax.nn.sigmoid(logits)}
    return {"probs": jax.nn.softmax(logits, axis=-1)}

  # --- results ----------------------------------------------------------------------------
  def score(self, predictions: dict, records: list[dict]) -> dict:
    gold = np.stack([self.gold(r) for r in records])
    problem = self.config.problem
    if problem == "regression":
      return metrics.regression(gold, predictions["value"])
    if problem == "multi_label":
      return metrics.multi_label(gold, predictions["probs"], self.labels, self.config.threshold)
    return metrics.single_label(gold, self._probs(predictions), self.labels)

  def _probs(self, predictions: dict) -> np.ndarray:
    if "scores" in predictions:  # label log-likelihoods -> a distribution over the labels
      s = predictions["scores"]
      e = np.exp(s - s.max(-1, keepdims=True))
      return e / e.sum(-1, keepdims=True)
    return predictions["probs"]

  def outputs(self, predictions: dict, records: list[dict]) -> list[dict]:
    out = []
    if self.config.problem == "regression":
      return [{"prediction": float(v)} for v in predictions["value"]]
    probs = self._probs(predictions)
    for p in probs:
      row = {"probabilities": {label: float(x) for label, x in zip(self.labels, p, strict=True)}}
      if self.config.problem == "multi_label":
        row["prediction"] = [
          lab for lab, x in zip(self.labels, p, strict=True) if x >= self.config.threshold
        ]
      else:
        row["prediction"] = self.labels[int(p.argmax())]
      out.append(row)
    return out

  # --- encoder-decoders: labels as text -----------------------------------------------------
  def _label_targets(self) -> list[list[int]]:
    words = self.config.label_words or self.labels
    return [self.tokenizer.encode(str(w)) for w in words]

  def _text_to_text_example(self, record, text, pair) -> dict:
    from flaxlm.objectives.text_to_text import pack_pairs, seq2seq_ids

    start, eos, pad = seq2seq_ids(self.tokenizer, "classification")
    source = self.tokenizer.encode(str(text) + ("" if pair is None else " " + str(pair)))
    targets = self._label_targets()
    target = targets[self._label_index(record) if has_field(record, self.columns.label) else 0]
    target_len = max(len(t) for t in targets) + 1
    example = pack_pairs([(source, target)], self.config.max_len, target_len, start, eos, pad)
    example["example_weight"] = np.float32(1.0)
    return example

  def _label_scores(self, model, params, batch):
    """(B, L) log-likelihood of each label's words (EOS included) given the input."""
    from flaxlm.objectives.text_to_text import pack_pairs, seq2seq_ids

    start, eos, pad = seq2seq_ids(self.tokenizer, "classification")
    targets = self._label_targets()
    length = batch["targets"].shape[1]
    encoded = model.apply(
      {"params": params}, batch["inputs"], batch["input_segments"], method="encode"
    )
    b = batch["inputs"].shape[0]
    tile = lambda x: jnp.broadcast_to(jnp.asarray(x)[None], (b, *np.shape(x)))
    scores = []
    for target in targets:
      row = pack_pairs([([0], target)], 1, length, start, eos, pad)
      logits = model.apply(
        {"params": params}, encoded, tile(row["decoder_inputs"]), batch["input_segments"],
        tile(row["decoder_segments"]), tile(row["decoder_positions"]), method="decode",
      )  # fmt: skip
      logp = jax.nn.log_softmax(logits, axis=-1)
      picked = jnp.take_along_axis(logp, tile(row["targets"])[..., None], axis=-1)[..., 0]
      scores.append(jnp.sum(picked * tile(row["weights"]), axis=-1))
    return jnp.stack(scores, axis=-1)


def _label_names(record: dict, column: str, config) -> list[str]:
  value = field(record, column, "label")
  if config.problem == "multi_label":
    items = value if isinstance(value, list) else str(value).split(config.label_separator)
    return [str(x).strip() for x in items if str(x).strip()]
  return [str(value).strip()]


def _natural(label: str):
  """Numbers in numeric order ('2' < '10'), then text."""
  try:
    return (0, float(label), label)
  except ValueError:
    return (1, 0.0, label)
