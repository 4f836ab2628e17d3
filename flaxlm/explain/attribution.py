"""Token attributions of a classifier's or tagger's decision: integrated gradients and
gradient x input over the token embeddings.

    a = attribute(flaxlm.explain.load("/tmp/sst2_minilm"), "a gripping, funny film")
    a.scores        # (T,) one number per token; for integrated gradients they sum to
    a.score - a.baseline_score   # (completeness; `a.delta` is what is left over)

The explained quantity is the log-probability of one class (a multi-label class: its
log-sigmoid; a regression: the output itself) — of the text, or of one word for a tagger.
Integrated gradients (Sundararajan et al. 2017) integrate its gradient along the straight line
from a baseline's embeddings to the text's, with Gauss-Legendre nodes (as captum does): all
`steps` points go through the model as one jitted batch. The embeddings are reached through
`flaxlm.nn.layers.probe_embeddings`: a forward pass records them (PROBES) and takes a shift
(SHIFTS), so the gradient is the model's own and no other entry point exists.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from flaxlm.errors import ConfigError
from flaxlm.explain.subject import Subject, encode, forward, token_labels
from flaxlm.nn.layers import PROBES, SHIFTS

METHODS = ("integrated_gradients", "gradient_x_input")
BASELINES = ("zeros", "pad")


@dataclasses.dataclass
class Attribution:
  tokens: list[str]
  scores: np.ndarray  # (T,) per token (summed over the embedding)
  label: str  # the class explained
  word: int | None  # the word explained (a tagger), else None
  score: float  # the explained quantity on the text
  baseline_score: float  # ... on the baseline (integrated gradients)
  method: str
  steps: int

  @property
  def delta(self) -> float:
    """Completeness: sum(scores) - (score - baseline_score); 0 for exact integrated gradients."""
    return float(self.scores.sum() - (self.score - self.baseline_score))


def attribute(
  subject: Subject,
  text: str,
  pair: str | None = None,
  label: str | None = None,
  word: int | None = None,
  method: str = "integrated_gradients",
  steps: int = 50,
  baseline: str = "zeros",
  chunk: int = 64,
) -> Attribution:
  """Attributions of `label` (default: the predicted class) for `text`; a tagger explains the
  tag of `word` (default: the first word not tagged with the first label, 'O')."""
  if method not in METHODS or baseline not in BASELINES:
    raise ConfigError(f"method must be one of {METHODS} and baseline one of {BASELINES}")
  if not subject.has_head:
    raise ConfigError(
      f"{subject.source}: attributions explain a fine-tuned classifier or tagger (a task head); "
      "this model has none"
    )
  batch, ids = encode(subject, text, pair)
  logits, state = forward(subject, batch, mutable=[PROBES])
  path, x = _token_embeddings(state[PROBES])
  logits = np.asarray(logits[0])
  position = None
  if logits.ndim == 2:  # a tagger: (T, C)
    words = batch["word_index"][0]
    position, word = _word_position(subject.task, logits, words, word)
    logits = logits[position]
  target = _target(subject.task, logits, label)
  problem = getattr(subject.task.config, "problem", "single_label")
  score_fn = _score_fn(subject, batch, path, target, position, problem)
  base = np.zeros_like(x)  # gradient x input: the gradient at the text alone (alpha 1)
  if method == "gradient_x_input":
    alphas, weights = np.ones(1, np.float32), np.ones(1, np.float32)
  else:
    if baseline == "pad":
      base = _pad_embeddings(subject, batch, path)
    nodes, w = np.polynomial.legendre.leggauss(steps)  # on [-1, 1]
    alphas, weights = ((nodes + 1) / 2).astype(np.float32), (w / 2).astype(np.float32)
  grad_sum = np.zeros_like(x)
  grads = jax.jit(jax.vmap(jax.grad(score_fn), in_axes=(0,)))
  for i in range(0, len(alphas), chunk):
    a = alphas[i : i + chunk]
    # shift so the embeddings are base + a (x - base): (a - 1)(x - base) added to x
    shifts = (a[:, None, None] - 1.0) * (x - base)[None]
    g = np.asarray(grads(jnp.asarray(shifts)))
    grad_sum += np.tensordot(weights[i : i + chunk], g, axes=1)
  scores = ((x - base) * grad_sum).sum(-1)
  score_at = jax.jit(score_fn)
  return Attribution(
    token_labels(subject.tokenizer, ids["inputs"]),
    scores,
    subject.task.labels[target] if subject.task.labels else str(target),
    word,
    float(score_at(jnp.zeros_like(x))),
    float(score_at(jnp.asarray(base - x))),
    method,
    len(alphas),
  )


def _token_embeddings(probes: dict) -> tuple[tuple, np.ndarray]:
  """(the probe's path, its (T, D) embeddings) of the one lookup of the text's tokens."""
  flat = traverse_util.flatten_dict(probes)
  path = next((p for p in flat if p[-1] in ("tokens", "source")), None)
  if path is None:
    raise ConfigError("this model records no token embeddings (flaxlm.nn.layers.probe_embeddings)")
  return path, np.asarray(flat[path][0][0], np.float32)


def _score_fn(subject: Subject, batch: dict, path: tuple, target: int, position, problem: str):
  """shift (T, D) -> the explained quantity with the token embeddings shifted by it."""

  def score(shift):
    shifts = traverse_util.unflatten_dict({path: shift[None]})
    logits, _ = forward(subject, batch, {SHIFTS: shifts})
    logits = logits[0] if position is None else logits[0, position]
    if problem == "regression":
      return logits[target]
    if problem == "multi_label":
      return jax.nn.log_sigmoid(logits[target])
    return jax.nn.log_softmax(logits)[target]

  return score


def _pad_embeddings(subject: Subject, batch: dict, path: tuple) -> np.ndarray:
  """The embeddings of the text with every token but the specials replaced by padding."""
  tok = subject.tokenizer
  pad = tok.special_ids.get("pad", 0) if hasattr(tok, "special_ids") else 0
  specials = set(getattr(tok, "special_ids", {}).values())
  inputs = batch["inputs"]
  padded = np.where(np.isin(inputs, list(specials)), inputs, pad).astype(inputs.dtype)
  _, state = forward(subject, {**batch, "inputs": padded}, mutable=[PROBES])
  return np.asarray(traverse_util.flatten_dict(state[PROBES])[path][0][0], np.float32)


def _word_position(task, logits: np.ndarray, words: np.ndarray, word: int | None):
  """(the token position of `word`'s first piece, the word) for a tagger."""
  firsts = {int(w): t for t, w in enumerate(words) if w >= 0}
  if word is None:
    predicted = {w: int(np.argmax(logits[t])) for w, t in firsts.items()}
    word = next((w for w in sorted(firsts) if predicted[w] != 0), min(firsts))
  if word not in firsts:
    raise ConfigError(f"--word={word}: the text has words 0..{max(firsts)} (within max_len)")
  return firsts[word], word


def _target(task, logits: np.ndarray, label: str | None) -> int:
  labels = list(task.labels or [])
  if label is None:
    return int(np.argmax(logits))
  if label not in labels:
    raise ConfigError(f"--label={label!r} is not one of the model's labels {labels}")
  return labels.index(label)
