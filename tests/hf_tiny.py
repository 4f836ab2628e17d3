"""Tiny randomly initialized Hugging Face models, built from configs (nothing is downloaded),
and the comparisons the flaxlm.convert tests share (test_convert*.py).

`TinyHF` builds each model the first time a test asks for it and saves it under one folder,
so a test gets the model it names whatever ran before it (alone, in any order, under
`pytest -n`)."""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from flax import traverse_util

from flaxlm.convert import export_hf, load_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ATOL = 1e-4
V = 101  # vocabulary of the tiny models
SAMPLES = [
  "Hello, world! It's 3:45pm; the café's naïve façade.",
  "  leading, trailing and   repeated   spaces  ",
  "tabs\tand\nnew\nlines\n\n",
  "Ünïcödé — “quoted” ½ ﬁ ÅSTRÖM Straße",
  "中文分词测试：北京欢迎你。日本語のテキスト한국어",
  "emoji 🙂👍🏽 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
  "a" * 120 + " pneumonoultramicroscopicsilicovolcanoconiosis",
  "Don't split can't; e-mail x@y.z http://example.com/a?b=c 12345.678",
  "",
]


def _gpt2():
  torch.manual_seed(0)
  config = transformers.GPT2Config(
    vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=16,
    scale_attn_by_inverse_layer_idx=True,  # folded into q
    bos_token_id=0, eos_token_id=0,
  )  # fmt: skip
  return transformers.GPT2LMHeadModel(config)


def _llama():
  torch.manual_seed(1)
  config = transformers.LlamaConfig(
    vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, intermediate_size=48, rope_theta=500.0,
    rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=64,
    bos_token_id=1, eos_token_id=2,
  )  # fmt: skip
  return transformers.LlamaForCausalLM(config)


ENCODER = dict(
  vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48
)


def _bert():
  """MLM + NSP heads and two token types."""
  torch.manual_seed(2)
  config = transformers.BertConfig(**ENCODER, max_position_embeddings=24)
  return transformers.BertForPreTraining(config)


def _roberta():
  """An MLM head, one token type and pad id 1."""
  torch.manual_seed(3)
  config = transformers.RobertaConfig(
    **ENCODER, max_position_embeddings=26, type_vocab_size=1, pad_token_id=1
  )
  model = transformers.RobertaForMaskedLM(config)
  with torch.no_grad():  # a non-zero type row, which import folds into the positions
    model.roberta.embeddings.token_type_embeddings.weight.normal_()
  return model


def _t5(v1_1: bool):
  torch.manual_seed(4)
  config = transformers.T5Config(
    vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=1, num_decoder_layers=2, num_heads=3,
    feed_forward_proj="gated-gelu" if v1_1 else "relu", tie_word_embeddings=not v1_1,
    relative_attention_num_buckets=8, relative_attention_max_distance=16,  # log buckets at 24
    decoder_start_token_id=0,
  )  # fmt: skip
  model = transformers.T5ForConditionalGeneration(config)
  if v1_1:  # transformers 5 ties T5's head whatever the config says; untie it as v1.1 is
    model.lm_head.weight = torch.nn.Parameter(torch.randn(V, 32))
  return model


BUILDERS = {
  "gpt2": _gpt2,
  "llama": _llama,
  "bert": _bert,
  "roberta": _roberta,
  "t5_v1_0": lambda: _t5(False),
  "t5_v1_1": lambda: _t5(True),
}


class TinyHF:
  """The tiny models of BUILDERS, each built and saved (safetensors) on first use."""

  def __init__(self, root: pathlib.Path):
    self.root, self._models = root, {}

  def model(self, name: str):
    """The transformers model (eval mode), saved at `path(name)`."""
    if name not in self._models:
      model = BUILDERS[name]().eval()
      model.save_pretrained(self.root / name)
      self._models[name] = model
    return self._models[name]

  def path(self, name: str) -> pathlib.Path:
    self.model(name)
    return self.root / name


def edited_copy(source: pathlib.Path, out: pathlib.Path, **changes) -> pathlib.Path:
  """A copy of a saved model folder with `changes` made to its config.json."""
  shutil.copytree(source, out)
  config = json.loads((out / "config.json").read_text())
  config.update(changes)
  (out / "config.json").write_text(json.dumps(config))
  return out


def bert_with_vocab(directory: pathlib.Path, texts: list[str], seed: int = 5):
  """A tiny HF BERT (2 x 32) saved in `directory` with the vocab.txt of a WordPiece
  tokenizer trained on `texts`, as a sentence-transformers folder ships: init_from='hf:<dir>'
  fine-tunes it. Returns the flaxlm tokenizer."""
  from flaxlm.data.tokenizers import TokenizerConfig
  from flaxlm.data.tokenizers.wordpiece import WordPieceTokenizer

  wp = WordPieceTokenizer.train(
    texts, TokenizerConfig(kind="wordpiece", vocab_size=64, special_tokens="bert", lowercase=True)
  )
  torch.manual_seed(seed)
  config = transformers.BertConfig(
    vocab_size=wp.vocab_size,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=48,
    max_position_embeddings=64,
  )
  transformers.BertForPreTraining(config).save_pretrained(directory)
  vocab = sorted(wp.tok.get_vocab().items(), key=lambda kv: kv[1])
  (directory / "vocab.txt").write_text("".join(piece + "\n" for piece, _ in vocab))
  return wp


# --- comparisons ----------------------------------------------------------------------------


def max_diff(ours, theirs, mask=None) -> float:
  """max |ours - theirs| (NumPy, JAX or torch arrays) where `mask` is set, or everywhere."""
  a, b = (np.asarray(x.detach() if hasattr(x, "detach") else x, np.float32) for x in (ours, theirs))
  diff = np.abs(a - b)
  return float(diff[np.asarray(mask, bool)].max() if mask is not None else diff.max())


def padded_ids(seed: int, length: int, pad: int = 0, vocab: int = V):
  """Right-padded ids (2, length) and their mask: row 1 has 3 padding positions."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, size=(2, length))
  mask = np.ones((2, length), np.int64)
  mask[1, -3:] = 0
  ids[mask == 0] = pad
  return ids, mask


def apply_model(model, params, *args, jit: bool = True, **kwargs):
  """`model.apply`, compiled as one program unless `jit=False` (op by op: cheaper for the
  encoder tests, whose op shapes repeat across tests and are compiled once)."""
  flags = {k: v for k, v in kwargs.items() if isinstance(v, bool)}
  arrays = {k: v for k, v in kwargs.items() if k not in flags}
  apply = lambda p, *a, **k: model.apply({"params": p}, *a, **k, **flags)
  return (jax.jit(apply) if jit else apply)(params, *args, **arrays)


def loads_cleanly(class_name: str, directory):
  """The exported model, asserting transformers found every weight and no stray ones."""
  model, info = getattr(transformers, class_name).from_pretrained(
    directory, output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], (
    info
  )
  return model.eval()


def assert_same_tree(a: dict, b: dict, skip=()) -> None:
  fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert set(fa) == set(fb)
  for k in fa:
    if "/".join(k) not in skip:
      np.testing.assert_array_equal(fa[k], fb[k], err_msg="/".join(k))


def round_trip(imported, directory, task=None) -> None:
  """export -> import gives the same config, task and parameters."""
  export_hf(
    directory,
    imported.family,
    imported.model_config,
    imported.params,
    imported.tokenizer,
    task=task,
  )
  again = load_hf(directory)
  assert again.model_config == imported.model_config
  assert again.task == imported.task
  assert_same_tree(again.params, imported.params)


def assert_same_ids(ours, theirs, texts=SAMPLES) -> None:
  """flaxlm's tokenizer gives transformers' ids (no special tokens added) on every text."""
  for text in texts:
    want = theirs(text, add_special_tokens=False)["input_ids"]
    assert ours.encode(text) == want, text


def training_corpus() -> list[str]:
  """Training text that ships with Python (the quickstart's), plus the samples' scripts."""
  from pydoc_data.topics import topics

  return [text for _, text in sorted(topics.items())][:60] + SAMPLES * 3
