"""Extractive question answering (SQuAD-style): a question and a passage -> the answer span.

The passage is cut into windows of `max_len` tokens overlapping by `doc_stride` ([CLS]
question [SEP] window [SEP]); each window learns the answer's first and last token, or the
[CLS] position when the answer is not inside it (Devlin et al. 2019, section 4.2). At
evaluation every window proposes its `n_best` start and end tokens; the best-scoring valid
span (start <= end, at most `max_answer_len` tokens, inside the passage) over all of a
question's windows becomes its answer, cut from the passage by character offsets, so answers
keep the passage's own text (Chinese included). Exact match and F1 are the official SQuAD
v1.1 script's, best over the gold answers.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from flaxlm.data.formats import WHERE, field, has_field
from flaxlm.errors import ConfigError, DataError
from flaxlm.models.heads import TaskModel
from flaxlm.nn import losses
from flaxlm.tasks import metrics
from flaxlm.tasks.base import Task, TaskConfig, bounded


@dataclasses.dataclass(frozen=True)
class QAConfig(TaskConfig):
  max_len: int = bounded(384, 1, why="tokens per window: [CLS] question [SEP] passage [SEP]")
  doc_stride: int = bounded(128, 1, why="passage tokens two consecutive windows share")
  max_question_len: int = bounded(64, 1, why="question tokens kept")
  max_answer_len: int = bounded(30, 1, why="answer tokens at most")
  n_best: int = bounded(20, 1, why="start and end candidates per window")
  dropout_rate: float = bounded(0.1, 0.0, 1.0, open_high=True, why="before the head")

  def __post_init__(self):
    super().__post_init__()
    room = self.max_len - self.max_question_len - 3  # [CLS] q [SEP] passage [SEP]
    if room <= self.doc_stride:
      raise ConfigError(
        f"task.doc_stride={self.doc_stride} must be smaller than the passage room of a window "
        f"(max_len {self.max_len} - max_question_len {self.max_question_len} - 3 = {room}); "
        "lower doc_stride or max_question_len, or raise max_len"
      )


class QA(Task):
  name = "qa"
  Config = QAConfig
  metric = "eval_f1"
  head_kind = "span"
  pad_values = {"inputs": 0, "segment_ids": 0, "type_ids": 0, "offsets": -1}

  @classmethod
  def metric_names(cls, config) -> tuple[str, ...]:
    return ("loss", "exact_match", "f1")

  def check(self) -> None:
    if self.family.kind == "encdec":
      raise ConfigError("extractive QA needs an encoder or decoder backbone (bert, gpt, lstm)")
    if not hasattr(self.tokenizer, "encode_with_offsets"):
      raise ConfigError(
        f"extractive QA needs character offsets, which {type(self.tokenizer).__name__} lacks"
      )

  def key(self, record):
    return (
      field(record, self.columns.question, "question"),
      field(record, self.columns.context, "context"),
    )

  def example(self, record: dict) -> dict:
    return self.examples(record)[0]

  def _answers(self, record) -> list[dict]:
    if not has_field(record, self.columns.answers):
      return []
    answers = field(record, self.columns.answers, "answers")
    if isinstance(answers, dict):  # TFDS squad: {'text': [...], 'answer_start': [...]}
      answers = [
        {"text": t, "answer_start": s}
        for t, s in zip(answers["text"], answers["answer_start"], strict=True)
      ]
    return answers

  def examples(self, record: dict) -> list[dict]:
    """The windows of one question's passage (see the module docstring)."""
    c, tok, ids = self.config, self.tokenizer, self.tokenizer.special_ids
    question, context = (str(x) for x in self.key(record))
    q = tok.encode(question)[: c.max_question_len]
    passage, spans = tok.encode_with_offsets(context)
    bert = "cls" in ids and "sep" in ids
    head = [ids["cls"], *q, ids["sep"]] if bert else [*q, ids.get("sep", tok.eos_id or 0)]
    tail = [ids["sep"]] if bert else ([tok.eos_id] if tok.eos_id is not None else [])
    room = c.max_len - len(head) - len(tail)
    answers = self._answers(record)
    answer = answers[0] if answers else None
    if answer is not None:
      start_char = int(answer["answer_start"])
      if context[start_char : start_char + len(answer["text"])] != answer["text"]:
        # Real files carry off-by-a-few offsets (CMRC 2018: 8 of 4,221 answers): take the
        # occurrence of the text nearest the stated start; text absent from the passage fails.
        found = [i for i in range(len(context)) if context.startswith(answer["text"], i)]
        if not found or not answer["text"]:
          raise DataError(
            f"{record[WHERE]}: answer {answer['text']!r} does not occur in the context "
            f"(answer_start={start_char}); fix or drop that record"
          )
        start_char = min(found, key=lambda i: abs(i - start_char))
      end_char = start_char + len(answer["text"])
    windows, begin = [], 0
    while True:
      window = list(range(begin, min(begin + room, len(passage))))
      tokens = head + [passage[i] for i in window] + tail
      offsets = np.full((len(tokens), 2), -1, np.int32)
      offsets[len(head) : len(head) + len(window)] = (
        [spans[i] for i in window] if window else np.zeros((0, 2))
      )
      start = end = 0  # no answer in this window: point at the first position
      if answer is not None and window:
        inside = [
          j for j, i in enumerate(window) if spans[i][0] < end_char and spans[i][1] > start_char
        ]
        if (
          inside
          and spans[window[inside[0]]][0] <= start_char
          and spans[window[inside[-1]]][1] >= end_char
        ):
          start, end = len(head) + inside[0], len(head) + inside[-1]
      windows.append({
        "inputs": np.asarray(tokens, np.int32),
        "segment_ids": np.ones(len(tokens), np.int32),
        "type_ids": np.asarray([0] * len(head) + [1] * (len(tokens) - len(head)), np.int32),
        "offsets": offsets,
        "start": np.int32(start),
        "end": np.int32(end),
        "example_weight": np.float32(1.0),
      })  # fmt: skip
      if begin + room >= len(passage):
        return windows
      begin += room - c.doc_stride

  def model(self, backbone):
    return TaskModel(backbone, self.family.features, "span", 2, self.config.dropout_rate)

  def _logits(self, model, params, batch, deterministic=True, rng=None):
    logits = model.apply(
      {"params": params}, batch, deterministic=deterministic,
      rngs=None if deterministic else {"dropout": rng},
    )  # fmt: skip
    # Positions that are padding can never be an answer boundary.
    mask = batch["segment_ids"] > 0
    return [jnp.where(mask, logits[..., i], -1e9) for i in (0, 1)]

  def loss(self, model, params, batch, rng, deterministic, loss_config):
    start, end = self._logits(model, params, batch, deterministic, rng)
    w = batch["example_weight"][:, None]
    sums = [
      losses.cross_entropy(logits[:, None], batch[key][:, None], w, loss_config.label_smoothing)
      for logits, key in ((start, "start"), (end, "end"))
    ]
    out = {k: (sums[0][k] + sums[1][k]) / 2 for k in sums[0] if k != "weight_sum"}
    out["weight_sum"] = sums[0]["weight_sum"]
    return out

  def predict(self, model, params, batch) -> dict:
    start, end = self._logits(model, params, batch)
    return {"start": start, "end": end, "offsets": batch["offsets"]}

  def answers_from(self, predictions: dict, records: list[dict]) -> list[str]:
    """The best valid span over each record's windows, as text of its passage."""
    c = self.config
    best = [(-np.inf, "") for _ in records]
    for start, end, offsets, owner in zip(
      predictions["start"],
      predictions["end"],
      predictions["offsets"],
      predictions["record"],
      strict=True,
    ):
      context = str(field(records[owner], self.columns.context, "context"))
      in_passage = offsets[:, 0] >= 0
      starts = [i for i in np.argsort(-start)[: c.n_best] if in_passage[i]]
      ends = [i for i in np.argsort(-end)[: c.n_best] if in_passage[i]]
      for s in starts:
        for e in ends:
          if s <= e < s + c.max_answer_len and start[s] + end[e] > best[owner][0]:
            best[owner] = (float(start[s] + end[e]), context[offsets[s, 0] : offsets[e, 1]])
    return [text for _, text in best]

  def score(self, predictions: dict, records: list[dict]) -> dict:
    golds = [[a["text"] for a in self._answers(r)] for r in records]
    for r, g in zip(records, golds, strict=True):
      if not g:
        raise DataError(f"{r[WHERE]}: a question without answers cannot be scored")
    return metrics.squad_scores(self.answers_from(predictions, records), golds)

  def outputs(self, predictions: dict, records: list[dict]) -> list[dict]:
    return [
      {"id": str(r.get(self.columns.id, i)), "prediction": text}
      for i, (r, text) in enumerate(
        zip(records, self.answers_from(predictions, records), strict=True)
      )
    ]
