"""Masked LM (BERT, RoBERTa) and next-sentence prediction (BERT).

Masks are drawn on the host from the Grain-given generator (fresh each epoch, exact on
resume); the loss runs only at the masked slots (Devlin et al. 2019; Liu et al. 2019).
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from flaxlm.errors import ConfigError
from flaxlm.nn import losses
from flaxlm.objectives.base import LossConfig, Objective, stream_windows


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
  """BERT masking: `mask_rate` of the non-special tokens are predicted; of those,
  `mask_fraction` become [MASK], `random_fraction` a random token, the rest stay."""

  mask_rate: float = 0.15
  mask_fraction: float = 0.8
  random_fraction: float = 0.1
  whole_word: bool = False  # mask all pieces of a word together
  max_predictions: int = 0  # per sequence; 0 = ceil(mask_rate * seq_len)


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
  Returns inputs (T,) and, padded to P = max_predictions, positions, targets, weights and
  at_mask (P,): at_mask is 1 at the chosen slots that show [MASK] (for eval_accuracy_at_mask).
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
    "at_mask": (weights & (new == mask_id)).astype(np.float32),
  }


def _bert_forward(model, params, batch, rng, deterministic: bool, loss: LossConfig):
  out = model.apply(
    {"params": params},
    batch["inputs"],
    type_ids=batch.get("type_ids"),
    segment_ids=batch.get("segment_ids"),
    mlm_positions=batch["positions"],
    deterministic=deterministic,
    rngs=None if deterministic else {"dropout": rng},
  )
  logits = out["mlm_logits"]
  sums = losses.cross_entropy(
    logits, batch["targets"], batch["weights"], loss.label_smoothing, loss.z_loss
  )
  if "at_mask" in batch:  # accuracy where the input shows [MASK], not the original or noise
    correct = jnp.argmax(logits, axis=-1) == batch["targets"]
    sums["at_mask_correct_sum"] = jnp.sum(correct * batch["at_mask"])
    sums["at_mask_count"] = jnp.sum(batch["at_mask"])
  return out, sums


def masked_lm(model, params, batch, rng, deterministic: bool, loss: LossConfig):
  """MLM loss at the masked slots: batch inputs (B, T), positions, targets, weights (B, P);
  optional type_ids, segment_ids (B, T)."""
  return _bert_forward(model, params, batch, rng, deterministic, loss)[1]


def masked_lm_nsp(model, params, batch, rng, deterministic: bool, loss: LossConfig):
  """MLM + next-sentence prediction (BERT): masked_lm's batch plus type_ids (B, T) and
  nsp_labels (B,) (1 = B follows A). The NSP loss of each sequence is weighted by P, the
  prediction slots per sequence, so loss_sum / weight_sum is about MLM mean + NSP mean and
  stays a plain sum (accumulation and sharding give the same update)."""
  out, sums = _bert_forward(model, params, batch, rng, deterministic, loss)
  if "nsp_logits" not in out:
    raise ConfigError("objective 'mlm_nsp' needs the NSP head: set --config.model.nsp_head=true")
  labels = batch["nsp_labels"][:, None]
  nsp = losses.cross_entropy(out["nsp_logits"][:, None], labels, jnp.ones(labels.shape))
  sums["loss_sum"] = sums["loss_sum"] + batch["weights"].shape[1] * nsp["loss_sum"]
  sums["nsp_correct_sum"], sums["nsp_count"] = nsp["correct_sum"], nsp["weight_sum"]
  return sums


def _mlm_example(window: np.ndarray, rng: np.random.Generator, cls: int, sep: int, **masking):
  """T - 2 tokens -> masked [CLS] tokens [SEP] (T,) with its prediction slots."""
  tokens = np.concatenate([[cls], window, [sep]]).astype(np.int32)
  return mask_example(tokens, rng, **masking)


def masked_lm_objective(
  tokenizer, masking: MaskingConfig | None = None, seq_len: int = 128, nsp: bool = False, **_
) -> Objective:
  """RoBERTa masked LM over full [CLS] ... [SEP] windows of the token stream; with `nsp`,
  BERT's MLM + next-sentence prediction over [CLS] A [SEP] B [SEP] segment pairs."""
  from flaxlm.models.bert import default_max_predictions

  masking = masking or MaskingConfig()
  ids = getattr(tokenizer, "special_ids", {})
  missing = [n for n in ("cls", "sep", "mask") if n not in ids]
  if missing:
    raise ConfigError(
      f"the masked-LM objective needs [CLS], [SEP] and [MASK] in the vocabulary (missing "
      f"{missing}); set --config.tokenizer.special_tokens=bert (tokenizer.kind sentencepiece or wordpiece)"
    )
  special = np.array(sorted(set(ids.values())), np.int32)
  example = functools.partial(
    _nsp_example if nsp else _mlm_example,
    cls=ids["cls"],
    sep=ids["sep"],
    c=masking,
    special=special,
    mask_id=ids["mask"],
    random_ids=np.setdiff1d(np.arange(tokenizer.vocab_size), special).astype(np.int32),
    word_start=word_start_table(tokenizer) if masking.whole_word else None,
    max_predictions=masking.max_predictions or default_max_predictions(seq_len, masking.mask_rate),
  )
  if nsp:
    return Objective("mlm_nsp", masked_lm_nsp, stream_windows(lambda t: t - 3, True), example)
  return Objective("mlm", masked_lm, stream_windows(lambda t: t - 2), example)


def _nsp_example(
  records: tuple[np.ndarray, np.ndarray], rng: np.random.Generator, cls: int, sep: int, **masking
):
  """(window, another window) of T - 3 tokens -> masked [CLS] A [SEP] B [SEP] (T,) with
  type ids (0 for [CLS] A [SEP], 1 for B [SEP]) and nsp_label. A is a random-length start of
  the window; half the time B is the rest of it (label 1), half the time as many tokens from a
  random place in the other window, which comes from elsewhere in the corpus (label 0)."""
  window, other = records
  n = len(window)
  cut = int(rng.integers(1, n))  # |A| in 1 .. n - 1
  is_next = rng.random() < 0.5
  if is_next:
    second = window[cut:]
  else:
    start = int(rng.integers(0, cut + 1))  # |B| = n - cut tokens of the other window
    second = other[start : start + n - cut]
  tokens = np.concatenate([[cls], window[:cut], [sep], second, [sep]]).astype(np.int32)
  example = mask_example(tokens, rng, **masking)
  example["type_ids"] = (np.arange(len(tokens)) > cut + 1).astype(np.int32)
  example["nsp_labels"] = np.int32(is_next)
  return example


def word_start_table(tokenizer) -> np.ndarray:
  """(V,) int32: 1 where a piece starts a word, 0 where it continues one."""
  if not hasattr(tokenizer, "word_starts"):
    raise ConfigError(
      "masking.whole_word needs a subword tokenizer (tokenizer.kind='sentencepiece' or 'wordpiece')"
    )
  return tokenizer.word_starts()


def fill_masks_report(trainable, params, tokenizer, example: dict) -> str:
  """One held-out example (numpy, as the objective makes it): its input with the chosen slots
  shown, the original tokens there, and the model's predictions."""
  import jax

  batch = {k: np.asarray(v)[None] for k, v in example.items() if k != "nsp_labels"}
  with trainable.context():
    out = jax.jit(
      lambda p, b: trainable.model.apply(
        {"params": p}, b["inputs"], type_ids=b.get("type_ids"), mlm_positions=b["positions"]
      )["mlm_logits"]
    )(params, batch)
  chosen = example["weights"] > 0
  predicted = np.asarray(jax.device_get(out))[0].argmax(-1)[chosen]
  original = example["targets"][chosen]
  pieces = lambda ids: " ".join(tokenizer.decode([int(i)]) or "?" for i in ids)
  return (
    f"input:      {tokenizer.decode(example['inputs'])}\n"
    f"masked:     {pieces(original)}\n"
    f"prediction: {pieces(predicted)}"
  )
