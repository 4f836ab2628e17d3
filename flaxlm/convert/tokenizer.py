"""`HFTokenizer` (tokenizer kind 'hf'): a Hugging Face `tokenizers` pipeline behind flaxlm's
tokenizer interface, built from what a checkpoint ships, giving transformers' ids.

Read from a model folder, first found wins (transformers' own preference):
  tokenizer.json             any fast tokenizer, as saved (padding and truncation switched off)
  spiece.model               T5's SentencePiece, with 100 <extra_id_i> sentinels after it
  vocab.json + merges.txt    byte-level BPE (GPT-2; RoBERTa)
  vocab.txt                  WordPiece (BERT; `do_lower_case` etc. from tokenizer_config.json)
The special tokens come from tokenizer_config.json / special_tokens_map.json, else the
family's defaults. `encode` adds no special tokens: flaxlm's tasks add them by id
(`flaxlm.tasks.base.encode_inputs`): [CLS] a [SEP] (b [SEP]) with `cls`/`sep`, which for
BERT is transformers' own layout and for RoBERTa is <s> a </s> b </s> (transformers puts
</s></s> between a pair); decoders get a EOS. `to_json` carries the whole pipeline inline.
"""

from __future__ import annotations

import json
import logging
import pathlib

from flaxlm.convert import files, spm
from flaxlm.data.tokenizers.hf import HFTokenizer
from flaxlm.errors import DataNotFoundError

log = logging.getLogger("flaxlm")

NAMES = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")
# Each family's special tokens when the checkpoint's tokenizer files do not name them.
DEFAULTS = {
  "bert": dict(pad="[PAD]", unk="[UNK]", cls="[CLS]", sep="[SEP]", mask="[MASK]"),
  "roberta": dict(
    bos="<s>", eos="</s>", cls="<s>", sep="</s>", unk="<unk>", pad="<pad>", mask="<mask>"
  ),
  "gpt2": dict(unk="<|endoftext|>", bos="<|endoftext|>", eos="<|endoftext|>"),
  "t5": dict(pad="<pad>", eos="</s>", unk="<unk>"),
  "llama": dict(bos="<s>", eos="</s>", unk="<unk>"),
}
DEFAULTS["mt5"], DEFAULTS["mistral"] = DEFAULTS["t5"], DEFAULTS["llama"]


def _token(value) -> str | None:
  """A special token as tokenizer_config.json writes it: a string or {'content': ...}."""
  if isinstance(value, dict):
    return value.get("content")
  return value if isinstance(value, str) else None


def special_tokens(directory: pathlib.Path, model_type: str) -> dict[str, str]:
  """name -> token string, from the tokenizer files over the family's defaults."""
  out = dict(DEFAULTS.get(model_type, {}))
  for source in (
    files.read_json(directory, "special_tokens_map.json"),
    files.read_json(directory, "tokenizer_config.json"),
  ):
    for name in NAMES:
      if f"{name}_token" in source:
        token = _token(source[f"{name}_token"])
        if token is None:
          out.pop(name, None)
        else:
          out[name] = token
  return out


def from_directory(directory: str | pathlib.Path, model_type: str = "") -> HFTokenizer | None:
  """The tokenizer a Hugging Face model folder ships, or None when it ships none."""
  directory = pathlib.Path(directory)
  model_type = model_type or files.read_json(directory, "config.json").get("model_type", "")
  settings = files.read_json(directory, "tokenizer_config.json")
  specials = special_tokens(directory, model_type)
  if (directory / "tokenizer.json").exists():
    tok = _from_tokenizer_json(directory / "tokenizer.json")
  elif (directory / "spiece.model").exists():
    tok = spm.t5_tokenizer((directory / "spiece.model").read_bytes())
  elif (directory / "vocab.json").exists() and (directory / "merges.txt").exists():
    tok = _byte_level_bpe(directory, settings, specials)
  elif (directory / "vocab.txt").exists():
    tok = _wordpiece(directory / "vocab.txt", settings, specials)
  else:
    if (directory / "tokenizer.model").exists():  # LLaMA's SentencePiece: no T5 layout
      log.warning(
        "%s: tokenizer.model without tokenizer.json is not read; ship the "
        "tokenizer.json transformers saves",
        directory,
      )
    return None
  return HFTokenizer(tok.to_str(), specials, model_type)


def _from_tokenizer_json(path: pathlib.Path):
  from tokenizers import Tokenizer

  return Tokenizer.from_file(str(path))


def _add_specials(tok, specials: dict[str, str]) -> None:
  from tokenizers import AddedToken

  present = [t for t in dict.fromkeys(specials.values()) if tok.token_to_id(t) is not None]
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in present])


def _byte_level_bpe(directory: pathlib.Path, settings: dict, specials: dict):
  """GPT-2 / RoBERTa's byte-level BPE, built as transformers' GPT2Tokenizer builds it."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

  vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
  merges = []
  for line in (directory / "merges.txt").read_text(encoding="utf-8").split("\n"):
    if line and not line.startswith("#version"):
      left, _, right = line.partition(" ")
      merges.append((left, right))
  bpe = models.BPE(
    vocab, merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False
  )
  tok = Tokenizer(bpe)
  prefix_space = bool(settings.get("add_prefix_space", False))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
  tok.decoder = decoders.ByteLevel()
  _add_specials(tok, specials)
  cls, sep = specials.get("cls"), specials.get("sep")
  if cls and sep and None not in (tok.token_to_id(cls), tok.token_to_id(sep)):
    # RoBERTa's: besides <s> a </s></s> b </s>, it trims the spaces off the token offsets.
    tok.post_processor = processors.RobertaProcessing(
      (sep, tok.token_to_id(sep)),
      (cls, tok.token_to_id(cls)),
      trim_offsets=bool(settings.get("trim_offsets", True)),
      add_prefix_space=prefix_space,
    )
  return tok


def _wordpiece(path: pathlib.Path, settings: dict, specials: dict):
  """BERT's WordPiece, built as transformers' BertTokenizer builds it."""
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

  pieces = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").split("\n")]
  if pieces and pieces[-1] == "":
    pieces.pop()
  vocab = {}
  for i, piece in enumerate(pieces):
    vocab.setdefault(piece, i)
  unk = specials.get("unk", "[UNK]")
  if unk not in vocab:
    raise DataNotFoundError(f"{path} lacks the unknown token {unk!r}")
  tok = Tokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
  tok.normalizer = normalizers.BertNormalizer(
    clean_text=True,
    handle_chinese_chars=bool(settings.get("tokenize_chinese_chars", True)),
    strip_accents=settings.get("strip_accents"),
    lowercase=bool(settings.get("do_lower_case", True)),
  )
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece(prefix="##")
  _add_specials(tok, specials)
  return tok
