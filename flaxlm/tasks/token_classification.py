"""Token classification (NER, POS): a sentence of words -> one tag per word.

Words come tokenized (CoNLL columns); each word is split into sub-words and its tag is
learned and predicted at its first sub-word (Devlin et al. 2019, section 5.3), the other
sub-words are ignored. Predictions map back to words; words cut off by `max_len` are
predicted 'O'. Entity scores are seqeval's, with CoNLL semantics for BIO and IOB1 tags.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from flaxlm.data.formats import WHERE, field, has_field
from flaxlm.errors import ConfigError, DataError
from flaxlm.models.heads import TaskModel
from flaxlm.nn import losses
from flaxlm.tasks import metrics
from flaxlm.tasks.base import Task, TaskConfig, bounded

OUTSIDE = "O"


@dataclasses.dataclass(frozen=True)
class TokenClassificationConfig(TaskConfig):
  max_len: int = bounded(128, 1, why="sub-word tokens per sentence, specials included")
  labels: tuple = ()  # the tag order; () = the training data's tags, sorted
  dropout_rate: float = bounded(0.1, 0.0, 1.0, open_high=True, why="before the head")
  # BiLSTM with a char CNN: characters read per word
  max_chars: int = bounded(16, 1, why="characters the char CNN reads per word")


class TokenClassification(Task):
  name = "token_classification"
  Config = TokenClassificationConfig
  metric = "eval_entity_f1"
  head_kind = "token"
  reports_tokens = True

  def __init__(self, *args):
    super().__init__(*args)
    self.chars = self.config.max_chars if getattr(self.model_config, "char_dim", 0) else 0
    self.pad_values = {
      "inputs": 0, "segment_ids": 0, "type_ids": 0, "labels": -1, "word_index": -1, "chars": 0,
    }  # fmt: skip

  @classmethod
  def fit_labels(cls, config, columns, records) -> list[str]:
    if config.labels:
      return [str(x) for x in config.labels]
    tags = set()
    for r in records:
      tags.update(_scheme_checked(field(r, columns.tags, "tags"), r))
    return sorted(tags | {OUTSIDE})

  @classmethod
  def metric_names(cls, config) -> tuple[str, ...]:
    return ("loss", "entity_precision", "entity_recall", "entity_f1", "accuracy")

  def check(self) -> None:
    if self.family.kind == "encdec":
      raise ConfigError(
        "token_classification needs an encoder or decoder backbone (bert, gpt, lstm); an "
        "encoder-decoder would tag with its encoder alone: use a bert or lstm model"
      )
    ids = self.tokenizer.special_ids
    self.check_room("max_len", 2 if "cls" in ids and "sep" in ids else 0, "[CLS]/[SEP] tokens")

  def key(self, record):
    return tuple(self._words(record))

  def _words(self, record) -> list[str]:
    words = field(record, self.columns.words, "words")
    return [str(w) for w in words] if isinstance(words, list) else str(words).split()

  def _tags(self, record) -> list[str]:
    tags = field(record, self.columns.tags, "tags")
    tags = [str(t) for t in tags] if isinstance(tags, list) else str(tags).split()
    if len(tags) != len(self._words(record)):
      raise DataError(f"{record[WHERE]}: {len(self._words(record))} words but {len(tags)} tags")
    return _scheme_checked(tags, record)

  def example(self, record: dict) -> dict:
    words = self._words(record)
    unlabelled = not has_field(record, self.columns.tags)  # predict mode: tags are not needed
    tags = [self.labels[0]] * len(words) if unlabelled else self._tags(record)
    tok, ids = self.tokenizer, self.tokenizer.special_ids
    bert = "cls" in ids and "sep" in ids
    head = [ids["cls"]] if bert else []
    tail = [ids["sep"]] if bert else []
    budget = self.config.max_len - len(head) - len(tail)
    tokens, labels, word_index, surface = (
      list(head),
      [-1] * len(head),
      [-1] * len(head),
      [""] * len(head),
    )
    for i, (word, tag) in enumerate(zip(words, tags, strict=True)):
      if self.chars:  # word pieces as the word tokenizer splits them, with their spelling
        parts = tok.split(word) or [word]
        pieces, spelled = tok.encode_words(parts), parts
      else:
        pieces = tok.encode(word) or [ids.get("unk", 0)]
        spelled = [word] + [""] * (len(pieces) - 1)
      if len(tokens) - len(head) + len(pieces) > budget:
        break
      tokens += pieces
      labels += [self._index(tag, record)] + [-1] * (len(pieces) - 1)
      word_index += [i] + [-1] * (len(pieces) - 1)
      surface += spelled
    tokens, labels = tokens + tail, labels + [-1] * len(tail)
    word_index, surface = word_index + [-1] * len(tail), surface + [""] * len(tail)
    out = {
      "inputs": np.asarray(tokens, np.int32),
      "segment_ids": np.ones(len(tokens), np.int32),
      "type_ids": np.zeros(len(tokens), np.int32),
      "labels": np.asarray(labels, np.int32),
      "word_index": np.asarray(word_index, np.int32),
      "example_weight": np.float32(1.0),
    }
    if self.chars:
      out["chars"] = tok.char_ids(surface, self.chars)
    return out

  def _index(self, tag: str, record) -> int:
    try:
      return self.labels.index(tag)
    except ValueError:
      raise DataError(
        f"{record[WHERE]}: tag {tag!r} is not one of the training tags {self.labels}"
      ) from None

  def model(self, backbone):
    return TaskModel(
      backbone, self.family.features, self.head_kind, len(self.labels), self.config.dropout_rate
    )

  def loss(self, model, params, batch, rng, deterministic, loss_config):
    logits = self.forward(model, params, batch, rng, deterministic)
    return self.loss_from_logits(logits, batch, loss_config)

  def distillable(self) -> bool:
    return True

  def soft_target_weights(self, batch):
    """A word's first sub-word: where its tag is learned and predicted."""
    return (batch["labels"] >= 0) * batch["example_weight"][:, None]

  def loss_from_logits(self, logits, batch, loss_config) -> dict:
    labels = batch["labels"]
    weights = self.soft_target_weights(batch)
    return losses.cross_entropy(
      logits, jnp.maximum(labels, 0), weights, loss_config.label_smoothing
    )

  def predict(self, model, params, batch) -> dict:
    logits = model.apply({"params": params}, batch)
    return {"tags": jnp.argmax(logits, -1), "word_index": batch["word_index"],
            "confidence": jnp.max(jax.nn.softmax(logits, -1), -1)}  # fmt: skip

  def word_tags(self, predictions: dict, i: int, n_words: int) -> list[str]:
    tags = [OUTSIDE] * n_words
    for tag, w in zip(predictions["tags"][i], predictions["word_index"][i], strict=True):
      if w >= 0:
        tags[w] = self.labels[int(tag)]
    return tags

  def score(self, predictions: dict, records: list[dict]) -> dict:
    gold = [self._tags(r) for r in records]
    predicted = [self.word_tags(predictions, i, len(g)) for i, g in enumerate(gold)]
    return metrics.entities(gold, predicted)

  def outputs(self, predictions: dict, records: list[dict]) -> list[dict]:
    out = []
    for i, r in enumerate(records):
      words = self._words(r)
      out.append({"words": words, "prediction": self.word_tags(predictions, i, len(words))})
    return out


def _scheme_checked(tags, record) -> list[str]:
  """The tags, each O, B-<type> or I-<type> (BIO or IOB1: what seqeval's entity scores read);
  anything else (a word read as its tag, POS tags) names its record's file:line."""
  tags = [str(t) for t in tags] if isinstance(tags, list) else str(tags).split()
  for i, tag in enumerate(tags):
    if tag != OUTSIDE and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
      raise DataError(
        f"{record.get(WHERE, '?')}: tag {tag!r} of token {i + 1} is not O, B-<type> or "
        "I-<type> (the BIO and IOB1 schemes entity scores read); fix the file or "
        "columns.tag_index"
      )
  return tags
