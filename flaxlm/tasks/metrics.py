"""Task metrics, computed on the host by the libraries that define them: scikit-learn
(classification, regression), SciPy (correlations), seqeval (CoNLL entity scores),
sacreBLEU and rouge-score (generation), and the official SQuAD normalization (QA). flaxlm
only turns predictions into the inputs these libraries expect.

Keys follow README's vocabulary: accuracy, precision_macro, recall_macro, f1_macro,
f1_micro, per_class, roc_auc, pr_auc, mcc, confusion_matrix (fractions); pearson, spearman;
entity_precision, entity_recall, entity_f1 (fractions); exact_match, f1 (percent, as the
SQuAD script); rouge1, rouge2, rougeL (fractions, as rouge-score) and bleu (0-100, as
sacreBLEU); num_examples always.
"""

from __future__ import annotations

import collections
import re
import string

import numpy as np

from flaxlm.errors import ConfigError


def _sklearn():
  try:
    import sklearn.metrics
  except ImportError:
    raise ConfigError(
      "fine-tuning metrics come from scikit-learn: pip install 'flaxlm[finetune]'"
    ) from None
  return sklearn.metrics


def single_label(y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
  """y_true (N,) label indices, probs (N, L) -> accuracy, macro / micro scores, per-class
  scores, MCC, the confusion matrix (rows: true, columns: predicted) and, for two labels,
  ROC AUC and PR AUC (average precision) of the second label's probability."""
  m = _sklearn()
  y_pred = probs.argmax(-1)
  ids = list(range(len(labels)))
  p, r, f, _ = m.precision_recall_fscore_support(
    y_true, y_pred, labels=ids, average="macro", zero_division=0
  )
  pc, rc, fc, support = m.precision_recall_fscore_support(
    y_true, y_pred, labels=ids, average=None, zero_division=0
  )
  out = {
    "num_examples": len(y_true),
    "accuracy": float(m.accuracy_score(y_true, y_pred)),
    "precision_macro": float(p),
    "recall_macro": float(r),
    "f1_macro": float(f),
    "f1_micro": float(m.f1_score(y_true, y_pred, labels=ids, average="micro", zero_division=0)),
    "mcc": float(m.matthews_corrcoef(y_true, y_pred)),
    "confusion_matrix": m.confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    "per_class": {
      label: {"precision": float(a), "recall": float(b), "f1": float(c), "support": int(d)}
      for label, a, b, c, d in zip(labels, pc, rc, fc, support, strict=True)
    },
  }
  if len(labels) == 2 and len(set(y_true.tolist())) == 2:
    out["roc_auc"] = float(m.roc_auc_score(y_true, probs[:, 1]))
    out["pr_auc"] = float(m.average_precision_score(y_true, probs[:, 1]))
  return out


def multi_label(y_true: np.ndarray, probs: np.ndarray, labels: list[str], threshold: float) -> dict:
  """y_true (N, L) 0/1, probs (N, L) -> subset accuracy, macro / micro scores, per-class
  scores and macro ROC AUC over the labels that occur both ways."""
  m = _sklearn()
  y_pred = (probs >= threshold).astype(int)
  p, r, f, _ = m.precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
  pc, rc, fc, support = m.precision_recall_fscore_support(
    y_true, y_pred, average=None, zero_division=0
  )
  out = {
    "num_examples": len(y_true),
    "accuracy": float(m.accuracy_score(y_true, y_pred)),  # exact match of the label set
    "precision_macro": float(p),
    "recall_macro": float(r),
    "f1_macro": float(f),
    "f1_micro": float(m.f1_score(y_true, y_pred, average="micro", zero_division=0)),
    "per_class": {
      label: {"precision": float(a), "recall": float(b), "f1": float(c), "support": int(d)}
      for label, a, b, c, d in zip(labels, pc, rc, fc, support, strict=True)
    },
  }
  both = [j for j in range(y_true.shape[1]) if 0 < y_true[:, j].sum() < len(y_true)]
  if both:
    out["roc_auc"] = float(m.roc_auc_score(y_true[:, both], probs[:, both], average="macro"))
  return out


def regression(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
  from scipy import stats

  m = _sklearn()
  constant = np.ptp(y_true) == 0 or np.ptp(y_pred) == 0
  return {
    "num_examples": len(y_true),
    "pearson": 0.0 if constant else float(stats.pearsonr(y_true, y_pred)[0]),
    "spearman": 0.0 if constant else float(stats.spearmanr(y_true, y_pred)[0]),
    "mse": float(m.mean_squared_error(y_true, y_pred)),
    "mae": float(m.mean_absolute_error(y_true, y_pred)),
  }


def entities(true_tags: list[list[str]], pred_tags: list[list[str]]) -> dict:
  """Entity-level precision / recall / F1 with CoNLL (conlleval) semantics: an entity counts
  only if its type and both boundaries match. seqeval's default mode reads BIO and IOB1
  alike, as conlleval does (an I- tag after O or another type starts an entity)."""
  try:
    import seqeval.metrics as sm
  except ImportError:
    raise ConfigError("entity metrics come from seqeval: pip install 'flaxlm[finetune]'") from None
  report = sm.classification_report(true_tags, pred_tags, output_dict=True, zero_division=0)
  per_type = {
    k: {
      "precision": v["precision"],
      "recall": v["recall"],
      "f1": v["f1-score"],
      "support": int(v["support"]),
    }
    for k, v in report.items()
    if not k.endswith(" avg")
  }
  return {
    "num_examples": len(true_tags),
    "entity_precision": float(sm.precision_score(true_tags, pred_tags, zero_division=0)),
    "entity_recall": float(sm.recall_score(true_tags, pred_tags, zero_division=0)),
    "entity_f1": float(sm.f1_score(true_tags, pred_tags, zero_division=0)),
    "accuracy": float(sm.accuracy_score(true_tags, pred_tags)),  # per token
    "per_class": per_type,
  }


# --- extractive QA: the official SQuAD v1.1 evaluation, with CMRC 2018's handling of Chinese --

_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_PUNCT = set(string.punctuation) | set("，。！？、；：“”‘’（）《》〈〉【】『』「」﹃﹄〔〕…—～·")


def normalize_answer(text: str) -> str:
  """SQuAD v1.1's normalize_answer: lowercase, no punctuation, no English articles, single
  spaces (punctuation extended with the full-width marks Chinese text uses)."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
  """Whitespace tokens of the normalized answer, each CJK character its own token (CMRC
  2018's mixed segmentation), so F1 gives partial credit in Chinese as in English."""
  tokens = []
  for word in normalize_answer(text).split():
    tokens += [t for t in re.split(f"({_CJK.pattern})", word) if t]
  return tokens


def squad_scores(predictions: list[str], answers: list[list[str]]) -> dict:
  """Exact match and token F1 in percent, each the maximum over a question's gold answers,
  averaged over questions (the official SQuAD v1.1 script's exact_match and f1)."""

  def f1(prediction: str, gold: str) -> float:
    p, g = answer_tokens(prediction), answer_tokens(gold)
    common = sum((collections.Counter(p) & collections.Counter(g)).values())
    if common == 0:
      return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)

  em = [
    max(float(normalize_answer(p) == normalize_answer(g)) for g in golds)
    for p, golds in zip(predictions, answers, strict=True)
  ]
  f = [max(f1(p, g) for g in golds) for p, golds in zip(predictions, answers, strict=True)]
  return {
    "num_examples": len(predictions),
    "exact_match": 100.0 * float(np.mean(em)),
    "f1": 100.0 * float(np.mean(f)),
  }


# --- generation ----------------------------------------------------------------------------


def generation(hypotheses: list[str], references: list[list[str]]) -> dict:
  """ROUGE-1/2/L F-measures (rouge-score, stemmed; best over each example's references) and
  corpus BLEU (sacreBLEU, 13a, all references), with several references per example."""
  try:
    import sacrebleu
    from rouge_score import rouge_scorer
  except ImportError:
    raise ConfigError(
      "generation metrics need rouge-score and sacrebleu: pip install 'flaxlm[finetune]'"
    ) from None
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
  scores = [scorer.score_multi(refs, hyp) for hyp, refs in zip(hypotheses, references, strict=True)]
  width = max(len(r) for r in references)
  streams = [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(width)]
  return {
    "num_examples": len(hypotheses),
    **{k: float(np.mean([s[k].fmeasure for s in scores])) for k in ("rouge1", "rouge2", "rougeL")},
    "bleu": float(sacrebleu.corpus_bleu(hypotheses, streams).score),
  }
