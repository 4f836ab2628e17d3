"""Pretraining objectives: how a window of tokens becomes an example (host, numpy) and how
an example becomes loss sums (device).

An objective's `loss` is `fn(model, params, batch, rng, deterministic, loss_config) -> sums`,
where `sums` are the token-summed quantities of `losses.cross_entropy`; `rng` (dropout) is
`fold_in(seed, step)`. Its `example(window, rng)` runs in the Grain pipeline with a NumPy
generator that Grain derives from (seed, position in the stream): masks are fresh each time
a sequence comes round again (RoBERTa's dynamic masking), a resumed run draws exactly the
same ones, and the eval set's masks are fixed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np

from flaxlm import losses


@dataclasses.dataclass(frozen=True)
class LossConfig:
  label_smoothing: float = 0.0
  z_loss: float = 0.0


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
  """BERT masking: `mask_rate` of the non-special tokens are predicted; of those,
  `mask_fraction` become [MASK], `random_fraction` a random token, the rest stay."""

  mask_rate: float = 0.15
  mask_fraction: float = 0.8
  random_fraction: float = 0.1
  whole_word: bool = False  # mask all pieces of a word together
  max_predictions: int = 0  # per sequence; 0 = ceil(mask_rate * seq_len)


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str
  loss: Callable  # (model, params, batch, rng, deterministic, LossConfig) -> sums
  window_length: Callable[[int], int]  # seq_len -> tokens taken from the stream per example
  example: Callable[[np.ndarray, np.random.Generator], dict]  # window, rng -> numpy example


# ----------------------------------------------------------------------------- causal LM


def lm_example(window: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
  """A window of T + 1 tokens -> next-token inputs/targets (T,)."""
  del rng
  return {
    "inputs": window[:-1],
    "targets": window[1:],
    "weights": np.ones(len(window) - 1, np.float32),
  }


def causal_lm(model, params, batch, rng, deterministic: bool, loss: LossConfig):
  """Next-token prediction. batch: inputs, targets, weights (B, T); optional positions,
  segment_ids (B, T) for packed sequences."""
  logits = model.apply(
    {"params": params},
    batch["inputs"],
    positions=batch.get("positions"),
    segment_ids=batch.get("segment_ids"),
    deterministic=deterministic,
    rngs=None if deterministic else {"dropout": rng},
  )
  return losses.cross_entropy(
    logits, batch["targets"], batch["weights"], loss.label_smoothing, loss.z_loss
  )


def causal_lm_objective(
  tokenizer=None, masking: MaskingConfig | None = None, seq_len: int = 0
) -> Objective:
  del tokenizer, masking, seq_len
  return Objective("causal_lm", causal_lm, lambda t: t + 1, lm_example)


# ----------------------------------------------------------------------------- masked LM


def mask_example(
  tokens: np.ndarray,
  rng: np.random.Generator,
  c: MaskingConfig,
  special: np.ndarray,
  mask_id: int,
  random_ids: np.ndarray,
  word_start: np.ndarray | None,
  max_predictions: int,
) -> dict[str, np.ndarray]:
  """BERT masking of one sequence (T,), on the host.

  Chooses round(mask_rate * n) of the n non-special tokens uniformly (whole words when
  `word_start` is given: each word draws one score, so its pieces rank together and only
  the last word taken may be cut), then 80/10/10 [MASK] / random ordinary token / unchanged.
  Returns inputs (T,) and, padded to P = max_predictions, positions, targets, weights (P,).
  """
  t = len(tokens)
  maskable = ~np.isin(tokens, special)
  scores = rng.random(t + 1)
  if word_start is not None:  # one score per word; position breaks ties inside a word
    scores = scores[np.cumsum(word_start[tokens])] - np.arange(t) * 1e-9
  else:
    scores = scores[:t]
  scores = np.where(maskable, scores, -1.0)
  positions = np.argsort(-scores, kind="stable")[:max_predictions]
  n = int(maskable.sum())
  count = min(max(round(c.mask_rate * n), min(n, 1)), max_predictions)
  weights = (np.arange(len(positions)) < count) & maskable[positions]
  kind = rng.random(len(positions))
  random_tokens = random_ids[rng.integers(len(random_ids), size=len(positions))]
  targets = tokens[positions]
  new = np.where(
    kind < c.mask_fraction,
    mask_id,
    np.where(kind < c.mask_fraction + c.random_fraction, random_tokens, targets),
  )
  inputs = tokens.copy()
  inputs[positions[weights]] = new[weights]
  return {
    "inputs": inputs.astype(np.int32),
    "positions": positions.astype(np.int32),
    "targets": targets.astype(np.int32),
    "weights": weights.astype(np.float32),
  }


def masked_lm(model, params, batch, rng, deterministic: bool, loss: LossConfig):
  """MLM loss at the masked slots: batch inputs (B, T), positions, targets, weights (B, P);
  optional type_ids, segment_ids (B, T)."""
  out = model.apply(
    {"params": params},
    batch["inputs"],
    type_ids=batch.get("type_ids"),
    segment_ids=batch.get("segment_ids"),
    mlm_positions=batch["positions"],
    deterministic=deterministic,
    rngs=None if deterministic else {"dropout": rng},
  )
  return losses.cross_entropy(
    out["mlm_logits"], batch["targets"], batch["weights"], loss.label_smoothing, loss.z_loss
  )


def _mlm_example(window: np.ndarray, rng: np.random.Generator, cls: int, sep: int, **masking):
  """T - 2 tokens -> masked [CLS] tokens [SEP] (T,) with its prediction slots."""
  tokens = np.concatenate([[cls], window, [sep]]).astype(np.int32)
  return mask_example(tokens, rng, **masking)


def masked_lm_objective(
  tokenizer, masking: MaskingConfig | None = None, seq_len: int = 128
) -> Objective:
  """BERT/RoBERTa masked LM over full [CLS] ... [SEP] windows of the token stream."""
  from flaxlm.models.bert import default_max_predictions

  masking = masking or MaskingConfig()
  ids = getattr(tokenizer, "special_ids", {})
  missing = [n for n in ("cls", "sep", "mask") if n not in ids]
  if missing:
    raise ValueError(
      f"the masked-LM objective needs [CLS], [SEP] and [MASK] in the vocabulary (missing "
      f"{missing}); set --config.tokenizer.kind=sentencepiece --config.tokenizer.special_tokens=bert"
    )
  special = np.array(sorted(set(ids.values())), np.int32)
  example = functools.partial(
    _mlm_example,
    cls=ids["cls"],
    sep=ids["sep"],
    c=masking,
    special=special,
    mask_id=ids["mask"],
    random_ids=np.setdiff1d(np.arange(tokenizer.vocab_size), special).astype(np.int32),
    word_start=word_start_table(tokenizer) if masking.whole_word else None,
    max_predictions=masking.max_predictions or default_max_predictions(seq_len, masking.mask_rate),
  )
  return Objective("mlm", masked_lm, lambda t: t - 2, example)


def word_start_table(tokenizer) -> np.ndarray:
  """(V,) int32: 1 where a piece starts a word (SentencePiece's '▁' prefix, or a special)."""
  sp = getattr(tokenizer, "sp", None)
  if sp is None:
    raise ValueError("masking.whole_word needs a sentencepiece tokenizer")
  starts = [
    1
    if sp.id_to_piece(i).startswith("\u2581")
    or sp.is_control(i)
    or sp.is_unknown(i)
    or sp.id_to_piece(i) in ("\n", "[CLS]", "[SEP]", "[MASK]")
    else 0
    for i in range(sp.get_piece_size())
  ]
  return np.asarray(starts, np.int32)


OBJECTIVES: dict[str, Callable[..., Objective]] = {
  "causal_lm": causal_lm_objective,
  "mlm": masked_lm_objective,
}


def make_objective(
  name: str, tokenizer=None, masking: MaskingConfig | None = None, seq_len: int = 128
) -> Objective:
  if name not in OBJECTIVES:
    raise ValueError(f"objective {name!r} is unknown; known: {sorted(OBJECTIVES)}")
  return OBJECTIVES[name](tokenizer, masking, seq_len)
