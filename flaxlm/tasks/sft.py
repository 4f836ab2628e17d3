"""Instruction tuning (SFT) of decoders: prompt -> response pairs, or chat turns with roles.

Each example is the prompt put into `template` followed by the response and EOS; the loss
counts the response tokens only. With chat records (`columns.messages`: a list of
{'role', 'content'}), every turn is written with `turn_template` and the loss counts the
assistant's turns; the last assistant turn is what evaluation generates. Training rows pack
`pack` examples one after another (segment ids keep them apart in attention, positions
restart), so short pairs do not waste the row. Evaluation generates greedily (optionally
without repeating an n-gram of `no_repeat_ngram` tokens) or by beam search (`beam_size` >= 1)
and scores ROUGE / BLEU against the response.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from flaxlm.data.formats import WHERE, field, has_field
from flaxlm.errors import ConfigError, DataError
from flaxlm.tasks.base import TaskConfig, bounded
from flaxlm.tasks.seq2seq import Seq2Seq, check_greedy_only


@dataclasses.dataclass(frozen=True)
class SFTConfig(TaskConfig):
  template: str = "### Instruction:\n{prompt}\n\n### Response:\n"
  turn_template: str = "<|{role}|>\n{content}\n"  # chat turns; the assistant's are learned
  assistant_role: str = "assistant"
  max_len: int = bounded(512, 2, why="tokens per packed row (and per example)")
  pack: int = bounded(4, 1, why="examples per training row")
  target_len: int = bounded(128, 1, why="response tokens kept")
  max_new_tokens: int = bounded(0, 0, why="generated tokens at most; 0 = target_len")
  beam_size: int = bounded(0, 0, why="beams in evaluation and predict; 0: greedy")
  alpha: float = bounded(0.6, 0.0, why="beam length penalty ((5 + len) / 6) ** alpha")
  no_repeat_ngram: int = bounded(0, 0, why="greedy: n-gram size never repeated; 0: off")
  generate_in_eval: bool = True

  def __post_init__(self):
    super().__post_init__()
    if "{prompt}" not in self.template:
      raise ConfigError(f"task.template={self.template!r} must contain {{prompt}}")
    if "{content}" not in self.turn_template:
      raise ConfigError(f"task.turn_template={self.turn_template!r} must contain {{content}}")
    check_greedy_only(self)


class SFT(Seq2Seq):
  name = "sft"
  Config = SFTConfig

  def check(self) -> None:
    if self.family.kind != "decoder":
      raise ConfigError(
        "task 'sft' tunes decoders (model_family gpt); encoder-decoders use 'seq2seq'"
      )
    super().check()
    if not self.columns.messages:  # the template, one response token and EOS fit a row
      framing = len(self.tokenizer.encode(self.config.template.format(prompt="")))
      self.check_room("max_len", framing + 1, "template tokens and EOS")

  # --- records: a prompt and its response, from pairs or chat turns ------------------------
  def _turns(self, record) -> list[dict]:
    turns = field(record, self.columns.messages, "messages")
    if not isinstance(turns, list) or not all(
      isinstance(t, dict) and "content" in t for t in turns
    ):
      raise DataError(f"{record[WHERE]}: messages must be a list of {{'role', 'content'}} objects")
    return turns

  def _last_assistant(self, turns: list[dict]) -> int:
    roles = [t.get("role") for t in turns]
    if self.config.assistant_role not in roles:
      return len(turns)
    return len(roles) - 1 - roles[::-1].index(self.config.assistant_role)

  def source(self, record) -> str:
    if self.columns.messages:
      turns = self._turns(record)
      head = turns[: self._last_assistant(turns)]
      text = "".join(self.config.turn_template.format(**t) for t in head)
      return text + self.config.turn_template.split("{content}")[0].format(
        role=self.config.assistant_role
      )
    return self.config.template.format(prompt=field(record, self.columns.prompt, "prompt"))

  def references(self, record) -> list[str]:
    if self.columns.messages:
      turns = self._turns(record)
      last = self._last_assistant(turns)
      if last == len(turns):
        raise DataError(
          f"{record[WHERE]}: no {self.config.assistant_role!r} turn to learn or score"
        )
      return [str(turns[last]["content"])]
    return [str(field(record, self.columns.response, "response"))]

  def _labelled(self, record) -> bool:
    if self.columns.messages:
      return any(t.get("role") == self.config.assistant_role for t in self._turns(record))
    return has_field(record, self.columns.response)

  def key(self, record):
    return (self.source(record), self.references(record)[0] if self._labelled(record) else None)

  # --- examples: template + response + EOS, learned on the response ------------------------
  def example(self, record: dict) -> dict:
    c, tok = self.config, self.tokenizer
    prompt = tok.encode(self.source(record))
    response = tok.encode(self.references(record)[0]) if self._labelled(record) else []
    response = [*response[: c.target_len - 1], tok.eos_id]
    prompt = prompt[-(c.max_len - len(response)) :]  # the prompt's end leads into the response
    tokens = prompt + response
    learn = np.arange(len(tokens) - 1) >= len(prompt) - 1  # predict response tokens and EOS
    return {
      "inputs": np.asarray(tokens[:-1], np.int32),
      "targets": np.asarray(tokens[1:], np.int32),
      "weights": learn.astype(np.float32),
      "segment_ids": np.ones(len(tokens) - 1, np.int32),
      "positions": np.arange(len(tokens) - 1, dtype=np.int32),
      "example_weight": np.float32(1.0),
    }

  def prompt_and_target(self, record) -> tuple[list[int], list[int]]:
    target = self.references(record)[0] if self._labelled(record) else ""
    return self.tokenizer.encode(self.source(record)), self.tokenizer.encode(target)

  def generate(self, trainable, params, records: list[dict], batch_size: int = 32) -> list[str]:
    keep = self.config.max_len - self.new_tokens  # prompt tokens that leave room for the output
    prompts = [self.tokenizer.encode(self.source(r))[-keep:] for r in records]
    return self.continue_prompts(trainable, params, prompts, batch_size)
