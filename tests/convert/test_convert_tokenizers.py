"""flaxlm.convert's tokenizers against transformers' own: ids (and offsets) equal for
WordPiece vocab.txt, byte-level BPE (GPT-2, RoBERTa), T5 SentencePiece and tokenizer.json;
the JSON a flaxlm checkpoint keeps rebuilds the same tokenizer; flaxlm-trained tokenizers
export to files transformers reads with flaxlm's ids; the real GPT-2 vocabulary (shared data)
when present."""

from __future__ import annotations

import json
import shutil

import pytest
from hf_tiny import SAMPLES, assert_same_ids, training_corpus, transformers

from flaxlm.convert import tokenizer_export
from flaxlm.convert.tokenizer import HFTokenizer, from_directory

PAIRS = [("How old are you?", "I'm 6 years old."), ("中文", "second segment here")]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
  return training_corpus()


def test_wordpiece_vocab_txt(corpus, tmp_path):
  from flaxlm.data.tokenizers import TokenizerConfig
  from flaxlm.data.tokenizers.wordpiece import WordPieceTokenizer
  from flaxlm.tasks.base import encode_inputs

  trained = WordPieceTokenizer.train(
    corpus, TokenizerConfig(kind="wordpiece", vocab_size=600, special_tokens="bert", lowercase=True)
  )
  vocab = sorted(trained.tok.get_vocab().items(), key=lambda kv: kv[1])
  (tmp_path / "vocab.txt").write_text("".join(piece + "\n" for piece, _ in vocab))
  theirs = transformers.BertTokenizer.from_pretrained(tmp_path)
  ours = from_directory(tmp_path, "bert")
  texts = [*SAMPLES, "a [MASK] in [SEP] text", corpus[0][:2000]]
  assert_same_ids(ours, theirs, texts)
  for a, b in PAIRS:  # flaxlm's tasks lay pairs out as transformers' BERT does
    assert list(encode_inputs(ours, a, b, 64)["inputs"]) == theirs(a, b)["input_ids"]
  ids, offsets = ours.encode_with_offsets(SAMPLES[0])
  assert (
    offsets
    == theirs(SAMPLES[0], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
  )
  # tokenizer.json (a saved fast tokenizer), and the JSON flaxlm checkpoints keep.
  theirs.save_pretrained(tmp_path / "fast")
  assert_same_ids(
    from_directory(tmp_path / "fast", "bert"),
    transformers.AutoTokenizer.from_pretrained(tmp_path / "fast"),
    texts,
  )
  _assert_same_jsonround_trip(ours, texts)


def _assert_same_jsonround_trip(tokenizer, texts) -> None:
  from flaxlm.data.tokenizers import tokenizer_from_json

  saved = json.loads(json.dumps(tokenizer.to_json()))
  assert saved["kind"] == "hf"
  rebuilt = tokenizer_from_json(saved)
  assert isinstance(rebuilt, HFTokenizer) and rebuilt.special_ids == tokenizer.special_ids
  assert [rebuilt.encode(t) for t in texts] == [tokenizer.encode(t) for t in texts]


@pytest.mark.parametrize("arch", ["gpt2", "roberta"])
def test_byte_level_bpe(corpus, tmp_path, arch):
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers

  specials = ["<|endoftext|>"] if arch == "gpt2" else ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.train_from_iterator(
    corpus,
    trainers.BpeTrainer(
      vocab_size=500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    ),
  )
  tok.model.save(str(tmp_path))  # vocab.json + merges.txt
  (tmp_path / "config.json").write_text(json.dumps({"model_type": arch}))
  theirs = getattr(
    transformers, "GPT2Tokenizer" if arch == "gpt2" else "RobertaTokenizer"
  ).from_pretrained(tmp_path)
  ours = from_directory(tmp_path)
  assert_same_ids(ours, theirs, [*SAMPLES, "x <|endoftext|> y <mask>"])
  text = SAMPLES[0] + "  twice  spaced"
  want = theirs(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
  assert ours.encode_with_offsets(text)[1] == want
  want = {
    "gpt2": {"unk", "bos", "eos"},
    "roberta": {"bos", "eos", "cls", "sep", "unk", "pad", "mask"},
  }
  assert set(ours.special_ids) == want[arch]
  assert ours.special_ids.get("pad") == theirs.pad_token_id


def test_t5_spiece_model(corpus, tmp_path):
  import io

  import sentencepiece as spm

  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(corpus),
    model_writer=model,
    vocab_size=400,
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    minloglevel=2,
  )
  (tmp_path / "spiece.model").write_bytes(model.getvalue())
  theirs = transformers.T5Tokenizer.from_pretrained(tmp_path)
  ours = from_directory(tmp_path, "t5")
  assert_same_ids(ours, theirs, [*SAMPLES, "fill <extra_id_0> and <extra_id_7>"])
  assert ours.vocab_size == len(theirs) == 500
  assert ours.special_ids["sentinel_0"] == theirs.convert_tokens_to_ids("<extra_id_0>") == 499
  assert (ours.pad_id, ours.eos_id, ours.special_ids["unk"]) == (0, 1, 2)
  _assert_same_jsonround_trip(ours, SAMPLES)


def test_flaxlm_tokenizers_export(corpus, tmp_path):
  """flaxlm-trained tokenizers written as tokenizer.json: transformers gives flaxlm's ids."""
  from flaxlm.data.tokenizers import ByteTokenizer, TokenizerConfig, train_tokenizer

  cases = {
    "wordpiece_cased": train_tokenizer(
      TokenizerConfig(kind="wordpiece", vocab_size=600, special_tokens="bert"), corpus
    ),
    "sp_bpe_exact": train_tokenizer(TokenizerConfig(vocab_size=600), corpus),
    "sp_unigram_t5": train_tokenizer(
      TokenizerConfig(vocab_size=600, model_type="unigram", special_tokens="t5"), corpus
    ),
    "byte": ByteTokenizer(),
  }
  texts = [*SAMPLES, corpus[1][:3000]]
  for name, tok in cases.items():
    out = tmp_path / name
    out.mkdir()
    tokenizer_export.write(out, tok, "t5" if name.endswith("t5") else "bert")
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    for text in texts:
      assert theirs(text, add_special_tokens=False)["input_ids"] == tok.encode(text), (name, text)
    again = from_directory(out)
    assert [again.encode(t) for t in texts] == [tok.encode(t) for t in texts]
    assert {k: v for k, v in again.special_ids.items()} == tok.special_ids, name


@pytest.mark.shared_data
def test_real_gpt2_vocabulary(tmp_path):
  from conftest import SHARED_DATA

  source = SHARED_DATA / "tokenizers" / "gpt2"
  shutil.copy(source / "encoder.json", tmp_path / "vocab.json")
  shutil.copy(source / "vocab.bpe", tmp_path / "merges.txt")
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  theirs = transformers.GPT2Tokenizer.from_pretrained(tmp_path)
  ours = from_directory(tmp_path)
  assert ours.vocab_size == 50257 and ours.eos_id == 50256
  shakespeare = (SHARED_DATA / "tinyshakespeare.txt").read_text()[:20000]
  assert_same_ids(ours, theirs, [*SAMPLES, shakespeare])
