"""SentencePiece models (Kudo & Richardson 2018) rebuilt as Hugging Face `tokenizers`
pipelines, from the model's protobuf (`sentencepiece_model.proto`).

Two builders, for two different promises:
  - `t5_tokenizer`: what transformers' T5Tokenizer builds from a checkpoint's `spiece.model`
    (a Unigram over the pieces, the model's precompiled normalizer, whitespace split and
    '▁' prefixes, and 100 `<extra_id_i>` sentinels appended after the pieces in reverse, so
    `<extra_id_0>` is the last id): the ids transformers gives.
  - `exact_tokenizer`: what SentencePiece itself computes for a model flaxlm trained (BPE or
    unigram, byte fallback, its normalization, dummy prefix and whitespace rules, and
    user-defined symbols such as '\\n' or [MASK] as added tokens): the ids flaxlm's own
    `SentencePieceTokenizer` gives, in a form transformers loads.
"""

from __future__ import annotations

SPACE = "\u2581"  # SentencePiece's visible space '▁'
NUM_SENTINELS = 100
# sentencepiece ModelProto.SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def parse(model_proto: bytes):
  from sentencepiece import sentencepiece_model_pb2

  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(model_proto)
  return proto


def _precompiled(proto):
  from tokenizers import normalizers

  charsmap = proto.normalizer_spec.precompiled_charsmap
  return normalizers.Precompiled(charsmap) if charsmap else None


def t5_tokenizer(model_proto: bytes):
  """transformers' T5Tokenizer pipeline for `spiece.model` (ids equal transformers')."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

  proto = parse(model_proto)
  vocab = [(p.piece, p.score) for p in proto.pieces]
  sentinels = [f"<extra_id_{i}>" for i in range(NUM_SENTINELS - 1, -1, -1)]
  vocab += [(s, 0.0) for s in sentinels]
  tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
  normalizer = _precompiled(proto)
  if normalizer is not None:
    tok.normalizer = normalizer
  tok.pre_tokenizer = pre_tokenizers.Sequence(
    [
      pre_tokenizers.WhitespaceSplit(),
      pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always", split=True),
    ]
  )
  tok.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always", split=True)
  control = [p.piece for p in proto.pieces if p.type in (CONTROL, UNKNOWN)]
  tok.add_special_tokens(
    [AddedToken(t, special=True, normalized=False) for t in control + sentinels]
  )
  return tok


def exact_tokenizer(model_proto: bytes):
  """SentencePiece's own segmentation of `model_proto` as a `tokenizers.Tokenizer`."""
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

  proto = parse(model_proto)
  spec, trainer = proto.normalizer_spec, proto.trainer_spec
  pieces = [(p.piece, p.score) for p in proto.pieces]
  unk = trainer.unk_id
  if trainer.model_type == 2:  # BPE: merges ranked by the merged piece's score, as sp merges
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    tok = Tokenizer(
      models.BPE(
        vocab,
        _merges(proto),
        unk_token=pieces[unk][0],
        byte_fallback=trainer.byte_fallback,
        fuse_unk=True,
      )
    )
  else:
    tok = Tokenizer(models.Unigram(pieces, unk_id=unk, byte_fallback=trainer.byte_fallback))
  steps = [n for n in [_precompiled(proto)] if n is not None]
  if spec.remove_extra_whitespaces:
    # sp drops leading, trailing and repeated spaces. A leading run becomes one space here
    # (so the text keeps offset 0 and Metaspace's '▁' stands for sp's dummy prefix).
    steps += [
      normalizers.Replace(Regex("^ +$"), ""),
      normalizers.Replace(Regex(" +$"), ""),
      normalizers.Replace(Regex(" {2,}"), " "),
    ]
  if steps:
    tok.normalizer = normalizers.Sequence(steps)
  if trainer.allow_whitespace_only_pieces:
    # Words start at a run of spaces that follows a non-space: 'a▁▁▁b' -> 'a', '▁▁▁b'.
    words = f"{SPACE}*[^{SPACE}]+|{SPACE}+"
  else:  # every '▁' starts a word: 'a▁▁b' -> 'a', '▁', '▁b'
    words = f"{SPACE}[^{SPACE}]*|[^{SPACE}]+"
  # Metaspace writes ' ' as '▁' and adds the dummy prefix to the text's first chunk (unless
  # it starts with '▁' already); the Split makes sp's words.
  scheme = "first" if spec.add_dummy_prefix else "never"
  tok.pre_tokenizer = pre_tokenizers.Sequence(
    [
      pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme=scheme, split=False),
      pre_tokenizers.Split(Regex(words), behavior="isolated"),
    ]
  )
  steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
  if spec.add_dummy_prefix:
    steps.append(decoders.Strip(" ", 1, 0))
  tok.decoder = decoders.Sequence(steps)
  user = [p.piece for p in proto.pieces if p.type == USER_DEFINED]
  # User-defined symbols ('\n', [MASK], <extra_id_0>) match in the raw text, so the text
  # around one is normalized on its own: where sp would write a '▁' piece next to the
  # symbol (a dummy prefix before it, a space after it) this writes none.
  tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
  control = [p.piece for p in proto.pieces if p.type in (CONTROL, UNKNOWN)]
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
  return tok


def _merges(proto) -> list[tuple[str, str]]:
  """Every split (a, b) of a normal piece into two pieces, best merged score first (sp BPE
  merges the adjacent pair whose concatenation scores highest)."""
  scores = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == NORMAL}
  merges = []
  for piece, (score, rank) in scores.items():
    for cut in range(1, len(piece)):
      left, right = piece[:cut], piece[cut:]
      if left in scores and right in scores:
        merges.append((-score, rank, scores[left][1], (left, right)))
  return [pair for *_, pair in sorted(merges)]
