"""flaxlm.convert against transformers itself (CPU torch): the tiny Hugging Face models of
tests/hf_tiny.py are imported, run side by side on padded batches, exported back and
reloaded.

Checked: logits parity (<= 1e-4, non-padding positions) for GPT-2, LLaMA (GQA, free
head_dim, untied), BERT (token types, MLM + NSP), RoBERTa (position offset, pad ids), T5
v1.0 (tied, scaled) and v1.1 (gated GELU, untied) with decoder inputs and log-spaced
relative buckets; exports that load with no missing/unexpected weights and give the same
outputs (LM heads, bare models, BERT/RoBERTa sequence/token/span heads, GPT-2/LLaMA
token/span heads); import -> export -> import is the identity; vocabulary padding, bfloat16
and sharded checkpoints; unsupported options fail naming them. Tokenizers:
test_convert_tokenizers.py; whole workflows (init_from, the CLI, flaxlm.load, generate.py):
test_convert_workflows.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flax import traverse_util
from hf_tiny import (
  ATOL,
  BUILDERS,
  V,
  apply_model,
  assert_same_tree,
  edited_copy,
  loads_cleanly,
  max_diff,
  padded_ids,
  round_trip,
  torch,
)

from flaxlm.convert import export_hf, load_hf
from flaxlm.errors import CheckpointMismatchError, ConfigError


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """Where the tests of this module write their exports."""
  return tmp_path_factory.mktemp("hf_out")


# --- decoders -------------------------------------------------------------------------------


def test_gpt2(tiny_hf, hf_dir):
  hf = tiny_hf.model("gpt2")
  imported = load_hf(tiny_hf.path("gpt2"))
  assert (imported.family, imported.architecture, imported.initialized) == ("gpt", "gpt2", [])
  ids, mask = padded_ids(0, 9)
  ours = apply_model(imported.model(), imported.params, ids, segment_ids=mask)
  want = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
  print("gpt2 max |logits diff|", max_diff(ours, want, mask))
  assert max_diff(ours, want, mask) <= ATOL

  cls = export_hf(hf_dir / "gpt2_out", "gpt", imported.model_config, imported.params)
  back = loads_cleanly(cls, hf_dir / "gpt2_out")
  assert cls == "GPT2LMHeadModel" and not back.config.scale_attn_by_inverse_layer_idx
  again = back(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
  assert max_diff(again, want, mask) <= ATOL
  round_trip(imported, hf_dir / "gpt2_rt")

  # Vocabulary padding: zero rows on import, same logits on the real ids, dropped on export.
  padded = load_hf(tiny_hf.path("gpt2"), pad_vocab_to=128)
  assert padded.model_config.vocab_size == 128
  assert not padded.params["embed"]["embedding"][V:].any()
  logits = apply_model(padded.model(), padded.params, ids, segment_ids=mask)
  assert max_diff(logits[..., :V], want, mask) <= ATOL
  export_hf(hf_dir / "gpt2_unpad", "gpt2", padded.model_config, padded.params)
  assert json.loads((hf_dir / "gpt2_unpad" / "config.json").read_text())["vocab_size"] == V
  assert_same_tree(load_hf(hf_dir / "gpt2_unpad").params, imported.params)

  # bfloat16 weights in shards (model.safetensors.index.json) read as float32. The same
  # model rebuilt (same seed), so the shared one stays float32.
  BUILDERS["gpt2"]().to(torch.bfloat16).save_pretrained(hf_dir / "gpt2_bf16", max_shard_size="20KB")
  assert (hf_dir / "gpt2_bf16" / "model.safetensors.index.json").exists()
  bf16 = load_hf(hf_dir / "gpt2_bf16")
  for a, b in zip(
    *(traverse_util.flatten_dict(p).values() for p in (bf16.params, imported.params)), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=2**-8, atol=1e-6)


def test_llama(tiny_hf, hf_dir):
  hf = tiny_hf.model("llama")
  imported = load_hf(tiny_hf.path("llama"))
  c = imported.model_config
  assert (c.num_kv_heads, c.head_dim, c.rope_theta, c.tie_embeddings) == (2, 16, 500.0, False)
  ids, mask = padded_ids(1, 10)
  ours = apply_model(imported.model(), imported.params, ids, segment_ids=mask)
  want = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
  print("llama max |logits diff|", max_diff(ours, want, mask))
  assert max_diff(ours, want, mask) <= ATOL
  cls = export_hf(hf_dir / "llama_out", "gpt", c, imported.params)
  back = loads_cleanly(cls, hf_dir / "llama_out")
  assert cls == "LlamaForCausalLM"
  again = back(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
  assert max_diff(again, want, mask) <= ATOL
  round_trip(imported, hf_dir / "llama_rt")


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
  ids, mask = padded_ids(7, 8)
  for task, n in (("token", 3), ("span", 2)):
    model = heads.TaskModel(gpt.GPT(config), registry.family_of("gpt").features, task, n)
    # Random values of the module's own shapes (larger than its init, for a sharper check).
    rng = np.random.default_rng(8)
    shapes = tree.abstract_params(model)
    flat = {k: rng.normal(0, 0.3, v.shape).astype(np.float32) for k, v in shapes.items()}
    params = traverse_util.unflatten_dict(flat)
    ours = apply_model(model, params, {"inputs": ids, "segment_ids": mask})
    cls = export_hf(hf_dir / f"{arch}_{task}", "gpt", config, params, task=task)
    got = loads_cleanly(cls, hf_dir / f"{arch}_{task}")(
      input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
    )
    want = got.logits if task == "token" else torch.stack([got.start_logits, got.end_logits], -1)
    print(f"{arch} {task} ({cls}) max |logits diff|", max_diff(ours, want, mask))
    assert max_diff(ours, want, mask) <= ATOL
    again = load_hf(hf_dir / f"{arch}_{task}")
    assert (again.task, again.model_config, again.initialized) == (task, config, [])
    assert_same_tree(again.params, params)


# --- encoders -------------------------------------------------------------------------------


def _encoder_inputs(arch: str):
  ids, mask = padded_ids(2, 12, pad=0 if arch == "bert" else 1)
  types = np.zeros_like(ids)
  if arch == "bert":
    types[:, 6:] = 1
  return ids, mask, types


def test_bert_and_roberta(tiny_hf, hf_dir):
  for arch in ("bert", "roberta"):
    imported, hf = load_hf(tiny_hf.path(arch)), tiny_hf.model(arch)
    ids, mask, types = _encoder_inputs(arch)
    ours = apply_model(
      imported.model(), imported.params, ids, type_ids=types, segment_ids=mask, jit=False
    )
    t = dict(
      input_ids=torch.tensor(ids),
      attention_mask=torch.tensor(mask),
      token_type_ids=torch.tensor(types),
    )
    got = hf(**t, output_hidden_states=True)
    mlm = got.prediction_logits if arch == "bert" else got.logits
    diffs = [
      max_diff(ours["mlm_logits"], mlm, mask),
      max_diff(ours["hidden"], got.hidden_states[-1], mask),
    ]
    if arch == "bert":
      diffs.append(max_diff(ours["nsp_logits"], got.seq_relationship_logits))
    print(f"{arch} max |diff| mlm, hidden(, nsp):", diffs)
    assert max(diffs) <= ATOL
    # RoBERTa's masked-LM class has no pooler: it is initialized, listed, and left out again.
    assert imported.initialized == ([] if arch == "bert" else ["pooler/bias", "pooler/kernel"])

    cls = export_hf(
      hf_dir / f"{arch}_out", arch, imported.model_config, imported.params, imported.tokenizer
    )
    assert cls == {"bert": "BertForPreTraining", "roberta": "RobertaForMaskedLM"}[arch]
    back = loads_cleanly(cls, hf_dir / f"{arch}_out")(**t)
    assert max_diff(back.prediction_logits if arch == "bert" else back.logits, mlm, mask) <= ATOL
    round_trip(imported, hf_dir / f"{arch}_rt")

    cls = export_hf(
      hf_dir / f"{arch}_bare", arch, imported.model_config, imported.params, task="bare"
    )
    bare = loads_cleanly(cls, hf_dir / f"{arch}_bare")(**t)
    assert max_diff(bare.last_hidden_state, got.hidden_states[-1], mask) <= ATOL
    assert max_diff(bare.pooler_output, ours["pooled"]) <= ATOL


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_task_heads(tiny_hf, hf_dir, arch):
  """Fine-tuned trees export to transformers' task classes, same logits, and re-import."""
  from flaxlm.models import heads, registry

  imported = load_hf(tiny_hf.path(arch))
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
    ours = apply_model(
      model, params, {"inputs": ids, "segment_ids": mask, "type_ids": types}, jit=False
    )
    out = hf_dir / f"{arch}_{task}"
    cls = export_hf(out, arch, config, params, imported.tokenizer, task=task, labels=labels)
    got = loads_cleanly(cls, out)(**t)
    if task == "span":
      want, where = torch.stack([got.start_logits, got.end_logits], -1), mask
    else:
      want, where = got.logits, (mask if task == "token" else None)
    print(f"{arch} {task} ({cls}) max |logits diff|", max_diff(ours, want, where))
    assert max_diff(ours, want, where) <= ATOL
    again = load_hf(out)
    assert (again.task, again.labels) == (task, labels)
    # Token and span classes have no pooler in transformers: it comes back freshly made.
    dropped = [] if task == "sequence" else ["backbone/pooler/bias", "backbone/pooler/kernel"]
    assert again.initialized == dropped
    assert_same_tree(again.params, params, skip=dropped)


# --- encoder-decoders -----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1_0", "v1_1"])
def test_t5(tiny_hf, hf_dir, version):
  v1_1 = version == "v1_1"
  hf = tiny_hf.model(f"t5_{version}")
  imported = load_hf(tiny_hf.path(f"t5_{version}"))
  c = imported.model_config
  assert (c.gated_mlp, c.tie_embeddings, c.scale_tied_logits) == (v1_1, not v1_1, not v1_1)
  src, src_mask = padded_ids(5, 24)
  tgt, tgt_mask = padded_ids(6, 7)
  ours = apply_model(
    imported.model(), imported.params, src, tgt, input_segments=src_mask, decoder_segments=tgt_mask
  )
  t = dict(
    input_ids=torch.tensor(src),
    attention_mask=torch.tensor(src_mask),
    decoder_input_ids=torch.tensor(tgt),
    decoder_attention_mask=torch.tensor(tgt_mask),
  )
  want = hf(**t).logits
  print(f"t5 {version} max |logits diff|", max_diff(ours, want, tgt_mask))
  assert max_diff(ours, want, tgt_mask) <= ATOL
  cls = export_hf(hf_dir / f"t5_{version}_out", "encdec", c, imported.params)
  back = loads_cleanly(cls, hf_dir / f"t5_{version}_out")
  assert max_diff(back(**t).logits, want, tgt_mask) <= ATOL
  round_trip(imported, hf_dir / f"t5_{version}_rt")


# --- what import refuses --------------------------------------------------------------------


def test_unsupported_options_fail_naming_them(tiny_hf, hf_dir):
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
      load_hf(edited_copy(tiny_hf.path(source), hf_dir / f"bad_{i}", **changes))
  # No safetensors, only a pickle: refused with the way to convert it.
  pickled = edited_copy(tiny_hf.path("gpt2"), hf_dir / "pickled")
  (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
  with pytest.raises(CheckpointMismatchError, match="pytorch_model.bin.*safe_serialization"):
    load_hf(pickled)
  # A weight no flaxlm parameter takes is never dropped silently.
  from safetensors.numpy import load_file, save_file

  extra = edited_copy(tiny_hf.path("gpt2"), hf_dir / "extra")
  tensors = load_file(extra / "model.safetensors")
  tensors["transformer.h.0.attn.q_norm.weight"] = np.ones(32, np.float32)
  save_file(tensors, extra / "model.safetensors")
  with pytest.raises(CheckpointMismatchError, match="q_norm"):
    load_hf(extra)
