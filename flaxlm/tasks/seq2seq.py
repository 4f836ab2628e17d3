"""Sequence-to-sequence: a source text -> a target text (summarization, translation).

Encoder-decoders read the source and predict the target (teacher forcing) and generate it
with beam search (`flaxlm.decode.seq2seq`, as generate.py does); decoders read
'source SEP target EOS' with the loss on the target alone, and continue the source with
beam search too (`flaxlm.decode.sampling.beam_generate`; `beam_size=0`: greedily).
Several references per example (`columns.target='summary1,summary2'`) are all scored; the
first trains. ROUGE-1/2/L come from rouge-score and BLEU from sacreBLEU.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from flaxlm.data.formats import WHERE, field, has_field
from flaxlm.errors import ConfigError, DataError
from flaxlm.tasks import metrics
from flaxlm.tasks.base import Task, TaskConfig, bounded, pack_examples


@dataclasses.dataclass(frozen=True)
class Seq2SeqConfig(TaskConfig):
  max_len: int = bounded(512, 2, why="source tokens, EOS included")
  target_len: int = bounded(128, 2, why="target tokens, EOS included")
  prefix: str = ""  # prepended to every source, e.g. 'summarize: ' (T5)
  beam_size: int = bounded(4, 0, why="beams in evaluation and predict; 0: greedy")
  alpha: float = bounded(0.6, 0.0, why="beam length penalty ((5 + len) / 6) ** alpha")
  # decoders, greedy: no n-gram of this size twice in an output (0: off)
  no_repeat_ngram: int = bounded(0, 0, why="n-gram size; 0: off")
  max_new_tokens: int = bounded(0, 0, why="generated tokens at most; 0 = target_len")
  generate_in_eval: bool = True  # evaluations decode and score text (else loss only)
  # pairs per training row (as train.py packs them); rows of max_len + target_len
  pack: int = bounded(1, 1, why="pairs per training row")

  def __post_init__(self):
    super().__post_init__()
    check_greedy_only(self)


def check_greedy_only(config) -> None:
  if config.beam_size and config.no_repeat_ngram:
    raise ConfigError("task.no_repeat_ngram applies to greedy decoding: set task.beam_size=0")


class Seq2Seq(Task):
  name = "seq2seq"
  Config = Seq2SeqConfig
  metric = "eval_rougeL"

  @classmethod
  def metric_for(cls, config) -> str:
    return "eval_rougeL" if config.generate_in_eval else "eval_loss"

  @classmethod
  def metric_mode_for(cls, config) -> str:
    return "max" if config.generate_in_eval else "min"

  @classmethod
  def metric_names(cls, config) -> tuple[str, ...]:
    return ("loss", "rouge1", "rouge2", "rougeL", "bleu") if config.generate_in_eval else ("loss",)

  def __init__(self, *args):
    super().__init__(*args)
    self.encdec = self.family.kind == "encdec"
    pad = (self.tokenizer.pad_id or 0) if self.tokenizer is not None else 0
    if self.encdec:
      self.pad_values = {
        "inputs": pad, "input_segments": 0, "input_positions": 0, "decoder_inputs": pad,
        "decoder_segments": 0, "decoder_positions": 0, "targets": pad, "weights": 0,
      }  # fmt: skip
    else:
      self.pad_values = {
        "inputs": pad, "targets": pad, "weights": 0, "segment_ids": 0, "positions": 0,
      }  # fmt: skip

  def check(self) -> None:
    if self.family.kind == "encoder":
      raise ConfigError(f"task {self.name!r} generates text: use a decoder (gpt) or encdec model")
    ids = self.tokenizer.special_ids
    if self.encdec and self.config.no_repeat_ngram:
      raise ConfigError("task.no_repeat_ngram applies to decoders; encoder-decoders use beams")
    if "eos" not in ids:
      raise ConfigError(
        f"task {self.name!r} needs an EOS token; the tokenizer reserves {sorted(ids)}"
      )

  # --- records ----------------------------------------------------------------------------
  def source(self, record) -> str:
    return self.config.prefix + str(field(record, self.columns.text, "text"))

  def references(self, record) -> list[str]:
    refs = [
      str(field(record, c, "target"))
      for c in self.columns.target.split(",")
      if has_field(record, c)
    ]
    if not refs:
      raise DataError(f"{record[WHERE]} has none of the target columns {self.columns.target!r}")
    return refs

  def key(self, record):
    return (self.source(record), self.references(record)[0] if self._labelled(record) else None)

  def _labelled(self, record) -> bool:
    return any(has_field(record, c) for c in self.columns.target.split(","))

  def prompt_and_target(self, record) -> tuple[list[int], list[int]]:
    """Token ids of what the model reads and of what it learns to write (first reference)."""
    target = self.references(record)[0] if self._labelled(record) else ""
    return self.tokenizer.encode(self.source(record)), self.tokenizer.encode(target)

  # --- examples ---------------------------------------------------------------------------
  def example(self, record: dict) -> dict:
    c = self.config
    source, target = self.prompt_and_target(record)
    ids = self.tokenizer.special_ids
    if self.encdec:
      from flaxlm.objectives.text_to_text import pack_pairs, seq2seq_ids

      start, eos, pad = seq2seq_ids(self.tokenizer, self.name)
      source, target = source[: c.max_len - 1], target[: c.target_len - 1]
      out = pack_pairs([(source, target)], len(source) + 1, len(target) + 1, start, eos, pad)
    else:
      join = ids.get("sep", ids["eos"])
      source = source[-(c.max_len - c.target_len - 1) :]  # keep the source's end: it leads in
      tokens = [*source, join, *target[: c.target_len - 1], ids["eos"]]
      out = {
        "inputs": np.asarray(tokens[:-1], np.int32),
        "targets": np.asarray(tokens[1:], np.int32),
        "weights": (np.arange(len(tokens) - 1) >= len(source)).astype(np.float32),
        "segment_ids": np.ones(len(tokens) - 1, np.int32),
        "positions": np.arange(len(tokens) - 1, dtype=np.int32),  # restart in a packed row
      }
    out["example_weight"] = np.float32(1.0)
    return out

  @property
  def group(self) -> int:
    return max(self.config.pack, 1)

  def pack(self, examples: list[dict]) -> dict:
    c = self.config
    if not self.encdec:  # one row: source, target, source, target, ...
      fields = ("inputs", "targets", "weights", "positions")
      return pack_examples(examples, [(fields, "segment_ids", c.max_len)])
    encoder = (("inputs", "input_positions"), "input_segments", c.max_len)
    decoder = ("decoder_inputs", "decoder_positions", "targets", "weights")
    return pack_examples(examples, [encoder, (decoder, "decoder_segments", c.target_len)])

  def tokens_per_example(self, example: dict) -> int:
    return int(np.sum(example["weights"] > 0))

  # --- model ------------------------------------------------------------------------------
  def model(self, backbone):
    return backbone  # the language model's own output layer writes the text

  def loss(self, model, params, batch, rng, deterministic, loss_config):
    from flaxlm.objectives import causal_lm, seq2seq

    batch = {**batch, "weights": batch["weights"] * batch["example_weight"][:, None]}
    fn = seq2seq if self.encdec else causal_lm
    return fn(model, params, batch, rng, deterministic, loss_config)

  def predict(self, model, params, batch) -> dict:
    return {"weight": jnp.sum(batch["weights"], axis=-1)}  # text comes from `generate`

  # --- generation and scores -------------------------------------------------------------
  @property
  def generates(self) -> bool:
    return self.config.generate_in_eval

  @property
  def new_tokens(self) -> int:
    """Tokens generated at most per output."""
    return self.config.max_new_tokens or self.config.target_len

  def generate(self, trainable, params, records: list[dict], batch_size: int = 32) -> list[str]:
    """The model's output text for each record."""
    c, new_tokens = self.config, self.new_tokens
    if self.encdec:
      from flaxlm.decode import seq2seq as seq2seq_decoding
      from flaxlm.decode.sampling import SamplingConfig

      config = seq2seq_decoding.DecodeConfig(
        max_len=min(new_tokens, trainable.model.config.max_len), beam_size=c.beam_size,
        alpha=c.alpha, sampling=SamplingConfig(temperature=0.0),
      )  # fmt: skip
      sources = [self.source(r) for r in records]
      return seq2seq_decoding.translate(
        trainable, params, self.tokenizer, sources, config, batch_size
      )
    ids = self.tokenizer.special_ids
    prompts = []
    for r in records:
      source, _ = self.prompt_and_target(r)
      prompts.append([*source[-(c.max_len - new_tokens - 1) :], ids.get("sep", ids["eos"])])
    return self.continue_prompts(trainable, params, prompts, batch_size)

  def continue_prompts(self, trainable, params, prompts: list[list[int]], batch_size: int):
    """A decoder's continuations of token-id prompts, decoded as the task config says."""
    from flaxlm.decode.sampling import complete

    c = self.config
    return complete(
      trainable, params, self.tokenizer, prompts, self.new_tokens, batch_size,
      c.beam_size, c.alpha, c.no_repeat_ngram,
    )  # fmt: skip

  def score(self, predictions: dict, records: list[dict]) -> dict:
    if "text" not in predictions:
      return {"num_examples": len(records)}
    return metrics.generation(predictions["text"], [self.references(r) for r in records])

  def outputs(self, predictions: dict, records: list[dict]) -> list[dict]:
    return [{"prediction": text} for text in predictions["text"]]
