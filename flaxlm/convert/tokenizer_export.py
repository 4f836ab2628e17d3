"""Writing a flaxlm tokenizer into a Hugging Face model folder: `tokenizer.json`,
`tokenizer_config.json` and `special_tokens_map.json`, which transformers' AutoTokenizer
loads as a PreTrainedTokenizerFast with the ids flaxlm gives.

  hf (HFTokenizer), wordpiece   already `tokenizers` pipelines: written as they are
  sentencepiece                 rebuilt from the model proto (`spm.exact_tokenizer`)
  byte                          UTF-8 bytes 0..255 as byte-level symbols, then <pad> </s> <s>
Character- and word-level tokenizers have no transformers counterpart and are refused.
`tokenizer(text)` in transformers adds specials as the family's models expect them:
[CLS] a [SEP] (b [SEP]) when the vocabulary has [CLS]/[SEP] or <s>/</s> as cls/sep, and
a </s> for T5.
"""

from __future__ import annotations

import json
import pathlib

from flaxlm.convert import spm
from flaxlm.convert.tokenizer import HFTokenizer
from flaxlm.errors import ConfigError


def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's printable stand-in for each byte (the ByteLevel pre-tokenizer's alphabet)."""
  keep = [
    *range(ord("!"), ord("~") + 1),
    *range(ord("¡"), ord("¬") + 1),
    *range(ord("®"), ord("ÿ") + 1),
  ]
  out, extra = {}, 0
  for b in range(256):
    if b in keep:
      out[b] = chr(b)
    else:
      out[b] = chr(256 + extra)
      extra += 1
  return out


def _byte_tokenizer():
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

  vocab = {ch: b for b, ch in bytes_to_unicode().items()}
  tok = Tokenizer(models.BPE(vocab, [], continuing_subword_prefix="", end_of_word_suffix=""))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  specials = {"pad": "<pad>", "eos": "</s>", "bos": "<s>"}  # ids 256, 257, 258 as flaxlm's
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials.values()])
  return tok, specials


def to_tokenizers(tokenizer):
  """(tokenizers.Tokenizer, {name: token string}) for a flaxlm tokenizer."""
  from tokenizers import Tokenizer

  from flaxlm.data.tokenizers import ByteTokenizer
  from flaxlm.data.tokenizers.sentencepiece import SentencePieceTokenizer
  from flaxlm.data.tokenizers.wordpiece import WordPieceTokenizer

  if isinstance(tokenizer, HFTokenizer):
    return Tokenizer.from_str(tokenizer.serialized), dict(tokenizer.special_tokens)
  if isinstance(tokenizer, ByteTokenizer):
    return _byte_tokenizer()
  if isinstance(tokenizer, WordPieceTokenizer):
    tok = Tokenizer.from_str(tokenizer.serialized)
  elif isinstance(tokenizer, SentencePieceTokenizer):
    tok = spm.exact_tokenizer(tokenizer.model_proto)
  else:
    raise ConfigError(
      f"a {type(tokenizer).__name__} has no transformers counterpart; export the model "
      "without a tokenizer (tokenizer=None) or train with a sentencepiece, wordpiece or byte one"
    )
  names = {k: v for k, v in tokenizer.special_ids.items() if not k.startswith("sentinel_")}
  return tok, {name: tok.id_to_token(i) for name, i in names.items()}


def _post_processor(tok, specials: dict[str, str], arch: str):
  from tokenizers import processors

  ids = {name: tok.token_to_id(t) for name, t in specials.items()}
  if ids.get("cls") is not None and ids.get("sep") is not None:
    cls, sep = specials["cls"], specials["sep"]
    return processors.TemplateProcessing(
      single=f"{cls} $A:0 {sep}",
      pair=f"{cls} $A:0 {sep} $B:1 {sep}:1",
      special_tokens=[(cls, ids["cls"]), (sep, ids["sep"])],
    )
  if arch == "t5" and ids.get("eos") is not None:
    eos = specials["eos"]
    return processors.TemplateProcessing(
      single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, ids["eos"])]
    )
  return None


def write(directory: pathlib.Path, tokenizer, arch: str) -> None:
  """tokenizer.json, tokenizer_config.json and special_tokens_map.json in `directory`."""
  tok, specials = to_tokenizers(tokenizer)
  tok.no_padding()
  tok.no_truncation()
  post = _post_processor(tok, specials, arch)
  if post is not None:
    tok.post_processor = post
  tok.save(str(directory / "tokenizer.json"))
  tokens = {f"{name}_token": t for name, t in specials.items()}
  sentinels = [
    t
    for k in range(spm.NUM_SENTINELS)
    if (t := f"<extra_id_{k}>") and tok.token_to_id(t) is not None
  ]
  if sentinels:
    tokens["additional_special_tokens"] = sentinels
  config = {
    "tokenizer_class": "PreTrainedTokenizerFast",  # tokenizer.json as it is, no rebuilding
    "clean_up_tokenization_spaces": False,
    **tokens,
  }
  (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
  (directory / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2) + "\n")
