"""`HFTokenizer` (tokenizer kind 'hf'): a Hugging Face `tokenizers` pipeline behind flaxlm's
tokenizer interface, giving transformers' ids. `flaxlm.convert.tokenizer` builds one from a
model folder's files; a checkpoint carries it whole (`to_json`), so loading one needs only
this module. `encode` adds no special tokens: tasks add them by id
(`flaxlm.tasks.base.encode_inputs`).
"""

from __future__ import annotations

from flaxlm.data.tokenizers.config import NUM_SENTINELS


class HFTokenizer:
  """flaxlm's tokenizer interface over a `tokenizers.Tokenizer` (see the module docstring)."""

  def __init__(self, serialized: str, special_tokens: dict[str, str], source: str = ""):
    from tokenizers import Tokenizer

    self.serialized, self.special_tokens, self.source = serialized, dict(special_tokens), source
    self.tok = Tokenizer.from_str(serialized)
    self.tok.no_padding()
    self.tok.no_truncation()
    self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
    ids = {name: self.tok.token_to_id(token) for name, token in special_tokens.items()}
    self.special_ids = {name: i for name, i in ids.items() if i is not None}
    for k in range(NUM_SENTINELS):
      i = self.tok.token_to_id(f"<extra_id_{k}>")
      if i is None:
        break
      self.special_ids[f"sentinel_{k}"] = i
    self.pad_id, self.eos_id, self.bos_id = (self.special_ids.get(n) for n in ("pad", "eos", "bos"))
    self._silent = {self.special_ids.get(n) for n in ("pad", "bos", "eos", "cls", "sep")}

  def encode(self, text: str) -> list[int]:
    return self.tok.encode(text, add_special_tokens=False).ids

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and each token's [start, end) character offsets in `text`."""
    enc = self.tok.encode(text, add_special_tokens=False)
    return enc.ids, [tuple(o) for o in enc.offsets]

  def decode(self, ids) -> str:
    keep = [int(i) for i in ids if int(i) not in self._silent]
    return self.tok.decode(keep, skip_special_tokens=False)

  def to_json(self) -> dict:
    return {
      "kind": "hf",
      "tokenizer": self.serialized,
      "special_tokens": self.special_tokens,
      "source": self.source,
    }

  @classmethod
  def from_json(cls, d: dict) -> HFTokenizer:
    return cls(d["tokenizer"], d["special_tokens"], d.get("source", ""))
