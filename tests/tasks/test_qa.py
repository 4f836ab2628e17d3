"""Extractive QA (flaxlm/tasks/qa.py): windows over long passages keep the answer
recoverable, the span decoder reads answers back by character offsets (Chinese included),
and exact match / F1 follow the official SQuAD v1.1 script."""

import numpy as np
import pytest

from flaxlm.data import tokenizers
from flaxlm.models import registry
from flaxlm.tasks import Columns, metrics, task_class

CONTEXT = (
  "The river Wen runs through the old town. In 1893 a stone bridge replaced the ferry, "
  "and the bridge still carries the market road over the river to the hills."
)


def qa_task(tokenizer, **config):
  cls = task_class("qa")
  fam = registry.family_of("bert")
  return cls(cls.Config(**config), Columns(), fam, fam.config_cls(), tokenizer, None)


def word_tokenizer(texts):
  config = tokenizers.TokenizerConfig(kind="word", special_tokens="bert", lowercase=True)
  return tokenizers.train_tokenizer(config, texts)


def record(question, answer, context=CONTEXT):
  start = context.index(answer)
  return {"id": "q1", "question": question, "context": context, "_where": "test:1",
          "answers": [{"text": answer, "answer_start": start}]}  # fmt: skip


def test_every_window_holding_the_answer_recovers_it():
  """With short windows and a stride, the gold span is recoverable (start/end tokens ->
  character offsets -> the answer text) from every window that contains it; windows that do
  not contain it point at position 0."""
  tok = word_tokenizer([CONTEXT, "when was the bridge built"])
  task = qa_task(tok, max_len=20, doc_stride=9, max_question_len=6)
  r = record("when was the bridge built", "In 1893 a stone bridge")
  windows = task.examples(r)
  assert len(windows) > 3
  holding = 0
  for w in windows:
    s, e = int(w["start"]), int(w["end"])
    assert len(w["inputs"]) <= 20
    if s == 0:
      continue
    holding += 1
    span = CONTEXT[w["offsets"][s, 0] : w["offsets"][e, 1]]
    assert span == "In 1893 a stone bridge"
  assert holding >= 2  # the stride put it in more than one window


def test_span_decoding_over_windows_picks_the_best_valid_span():
  tok = word_tokenizer([CONTEXT, "what does the bridge carry"])
  task = qa_task(tok, max_len=24, doc_stride=8, max_question_len=6, max_answer_len=4)
  r = record("what does the bridge carry", "the market road")
  windows = task.examples(r)
  target = next(i for i, w in enumerate(windows) if int(w["start"]) > 0)
  preds = {"start": [], "end": [], "offsets": [], "record": []}
  for i, w in enumerate(windows):
    start, end = np.zeros(len(w["inputs"])), np.zeros(len(w["inputs"]))
    if i == target:  # a strong, valid span ...
      start[int(w["start"])], end[int(w["end"])] = 5.0, 5.0
      start[1] = end[0] = 9.0  # ... and stronger scores outside the passage, never taken
    preds["start"].append(start), preds["end"].append(end)
    preds["offsets"].append(w["offsets"]), preds["record"].append(0)
  assert task.answers_from(preds, [r]) == ["the market road"]
  assert task.score(preds, [r])["exact_match"] == 100.0


def test_chinese_offsets_cut_answers_from_the_passage():
  context = "北京是中国的首都，也是一座历史悠久的城市。"
  tok = word_tokenizer([context, "中国的首都是哪里"])
  task = qa_task(tok, max_len=16, doc_stride=4, max_question_len=8)
  r = record("中国的首都是哪里", "北京", context)
  w = next(w for w in task.examples(r) if int(w["start"]) > 0)
  assert context[w["offsets"][int(w["start"]), 0] : w["offsets"][int(w["end"]), 1]] == "北京"


OFFICIAL = [
  # (prediction, gold answers, exact match, F1) by the official SQuAD v1.1 evaluate script
  ("the Eiffel Tower", ["Eiffel Tower"], 1.0, 1.0),
  (
    "Eiffel Tower in Paris",
    ["Eiffel Tower", "the tower"],
    0.0,
    2 * (2 / 4 * 2 / 2) / (2 / 4 + 2 / 2),
  ),
  ("1,893.", ["1893"], 1.0, 1.0),
  ("a stone bridge", ["stone bridge over the river"], 0.0, 2 * (2 / 2) * (2 / 4) / (1 + 2 / 4)),
  ("Paris", ["London", "Rome"], 0.0, 0.0),
]


@pytest.mark.parametrize("prediction, golds, em, f1", OFFICIAL)
def test_exact_match_and_f1_follow_the_official_script(prediction, golds, em, f1):
  out = metrics.squad_scores([prediction], [golds])
  assert out["exact_match"] == pytest.approx(100 * em)
  assert out["f1"] == pytest.approx(100 * f1)


def test_chinese_answers_get_character_level_partial_credit():
  out = metrics.squad_scores(["北京市"], [["北京"]])  # 2 of 3 characters right, all gold found
  assert out["exact_match"] == 0.0
  assert out["f1"] == pytest.approx(100 * 2 * (2 / 3) * 1 / (2 / 3 + 1))
  assert metrics.normalize_answer("“北京”。") == "北京"


def test_an_answer_start_a_few_characters_off_is_realigned():
  """Real files (CMRC 2018: 8 of 4,221 answers) state answer_start a few characters off: the
  occurrence nearest the stated start is taken; an answer the passage lacks fails by name."""
  from flaxlm.errors import DataError

  tok = word_tokenizer([CONTEXT, "what does the bridge carry"])
  task = qa_task(tok, max_len=64, doc_stride=16, max_question_len=6)
  right = record("what does the bridge carry", "the market road")
  off = {**right, "answers": [{"text": "the market road", "answer_start": right["answers"][0]["answer_start"] + 3}]}  # fmt: skip
  gold = [(int(w["start"]), int(w["end"])) for w in task.examples(right)]
  assert [(int(w["start"]), int(w["end"])) for w in task.examples(off)] == gold
  assert any(s > 0 for s, _ in gold)
  absent = {**right, "answers": [{"text": "a ferry boat", "answer_start": 3}]}
  with pytest.raises(DataError, match=r"test:1: answer 'a ferry boat' does not occur"):
    task.examples(absent)
