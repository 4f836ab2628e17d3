"""LoRA (flaxlm/nn/lora.py, by Qwix) through the fine-tuning loop: r·(d_in + d_out) parameters
per targeted matrix, outputs equal to the base model's at the start, the base bit-identical
after steps with only adapters and the task head trained and holding optimizer state, every
task kind on every family, merging equal to the adapted model, and one-line refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from samples import RUNS, by_step, run_config, trained_from

from flaxlm.config import finetuning as config_finetune
from flaxlm.errors import ConfigError
from flaxlm.finetuning import load as finetuned
from flaxlm.finetuning import run as finetuning
from flaxlm.models import registry
from flaxlm.nn import lora, quantize


def trained_with_lora(tmp_path, monkeypatch, name, **lora_keys):
  """(initial params, fine-tuned model) of a two-step LoRA run of RUNS[name]."""
  c = run_config(tmp_path, name)
  c.lora.update({"rank": 2, "alpha": 4.0, "targets": ".*/(query|value)", **lora_keys})
  return trained_from(c, tmp_path / "workdir", monkeypatch)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_lora_on_every_task_kind_trains_only_adapters_and_the_head(name, tmp_path, monkeypatch):
  init, model = trained_with_lora(tmp_path, monkeypatch, name)
  before, after = (traverse_util.flatten_dict(p) for p in (init, jax.device_get(model.params)))
  adapters = {k: v for k, v in after.items() if lora.is_adapter(k)}
  kernels = {k[:-1] + (k[-1][: -len("_lora_a")],) for k in adapters if k[-1].endswith("_lora_a")}
  assert kernels and all(k[-2] in ("query", "value") for k in kernels)
  for k in kernels:  # exactly r·(d_in + d_out) per targeted matrix
    a, b = adapters[(*k[:-1], k[-1] + "_lora_a")], adapters[(*k[:-1], k[-1] + "_lora_b")]
    d_in = a.shape[0]
    assert a.size + b.size == 2 * (d_in + before[k].size // d_in)
    assert not np.any(before[(*k[:-1], k[-1] + "_lora_b")])  # B starts at zero
    assert np.any(b), "/".join(k)  # and has learned
  head = model.task.layout.is_head
  for path, value in before.items():
    if not lora.is_adapter(path) and not head(path):
      np.testing.assert_array_equal(after[path], value, err_msg="/".join(path))
  trained = sum(v.size for k, v in after.items() if lora.is_adapter(k) or head(k))
  assert model.trainable.num_trainable == trained
  opt_size = sum(x.size for x in jax.tree.leaves(model.trainable.abstract_state.opt_state))
  assert opt_size <= 2 * trained + 8  # Adam's two moments of what trains, a few counters


def test_adapted_starts_at_the_base_and_merged_equals_adapted(tmp_path, monkeypatch):
  init, model = trained_with_lora(tmp_path, monkeypatch, "token_gpt")
  apply = model.trainable.model.apply
  ids = np.asarray([model.tokenizer.encode("the EU rejects")], np.int32)
  batch = {"inputs": ids, "segment_ids": np.ones_like(ids), "type_ids": np.zeros_like(ids)}
  base = {k: v for k, v in traverse_util.flatten_dict(init).items() if not lora.is_adapter(k)}
  unadapted = model.task.model(registry.build_model(model.family, model.model_config))
  # Device arrays: Qwix finds a kernel among a module's jax.Array params (not numpy's).
  init, params = jax.tree.map(jnp.asarray, init), model.params
  np.testing.assert_allclose(
    apply({"params": init}, batch),
    unadapted.apply({"params": traverse_util.unflatten_dict(base)}, batch),
    atol=1e-6,
  )
  merged = lora.merged(jax.device_get(params), lora.LoraConfig(rank=2, alpha=4.0))
  assert not any(lora.is_adapter(k) for k in traverse_util.flatten_dict(merged))
  np.testing.assert_allclose(
    unadapted.apply({"params": merged}, batch), apply({"params": params}, batch), atol=1e-5
  )
  # The workdir reloads base + adapters for evaluation, with the accuracy training ended with.
  reloaded = finetuned.load(tmp_path / "workdir")
  np.testing.assert_allclose(
    reloaded.trainable.model.apply({"params": reloaded.params}, batch),
    apply({"params": params}, batch),
    atol=1e-6,
  )


@pytest.mark.parametrize(
  "keys, message",
  [
    ({"rank": -1}, "lora.rank=-1"),
    ({"rank": 4, "alpha": 0.0}, "lora.alpha=0.0"),
    ({"rank": 4, "dropout": 0.1}, "lora.dropout=0.1"),
    ({"rank": 4, "targets": "(query"}, "lora.targets='(query' is not a regex"),
  ],
)
def test_bad_lora_settings_are_refused_when_the_config_is_read(keys, message):
  c = config_finetune.finetune_config()
  c.lora.update(keys)
  with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
    config_finetune.from_config_dict(c)


def test_targets_that_match_no_projection_name_the_projections(tmp_path):
  c = run_config(tmp_path, "token_gpt")
  c.lora.update(rank=2, targets=".*/q_proj")
  with pytest.raises(ConfigError, match=r"matches no projection.*layers_0/attn/query"):
    finetuning.train(config_finetune.from_config_dict(c), tmp_path / "workdir")


@pytest.mark.parametrize("name", ["token_gpt", pytest.param("seq2seq_t5", marks=pytest.mark.slow)])
def test_lora_on_a_2x2x2_mesh_trains_as_data_parallel(name, tmp_path):
  """Adapters carry their kernels' logical axes: sharded over fsdp and tensor, a LoRA run
  logs the losses of the same run over data parallelism only."""
  losses = {}
  for mesh in ({"data": 2, "fsdp": 2, "tensor": 2}, {"data": 8, "fsdp": 1, "tensor": 1}):
    c = run_config(tmp_path, name, num_train_steps=4, log_every=1)
    c.lora.update(rank=2, alpha=4.0)
    c.mesh.update(mesh)
    workdir = tmp_path / "x".join(str(v) for v in mesh.values())
    trained = finetuning.train(config_finetune.from_config_dict(c), workdir)["model"]
    assert dict(trained.trainable.mesh.shape) == mesh
    losses[workdir.name] = [r["loss"] for _, r in sorted(by_step(workdir).items()) if "loss" in r]
  sharded, data_parallel = losses.values()
  assert len(sharded) == 4
  np.testing.assert_allclose(sharded, data_parallel, rtol=1e-5)


@pytest.mark.slow
def test_cli_export_merges_the_adapters_into_a_model_transformers_loads(tmp_path):
  from hf_tiny import ATOL, loads_cleanly, max_diff, torch

  from flaxlm.convert.__main__ import main

  c = run_config(tmp_path, "token_gpt", num_train_steps=4)
  c.lora.update(rank=2, alpha=4.0, targets=".*/(query|key|value|out)")
  finetuning.train(config_finetune.from_config_dict(c), tmp_path / "workdir")
  main(["export", str(tmp_path / "workdir"), str(tmp_path / "hf")])
  hf = loads_cleanly("GPT2ForTokenClassification", tmp_path / "hf")  # no adapter weights left
  model = finetuned.load(tmp_path / "workdir")
  ids = np.asarray([model.tokenizer.encode("the EU rejects")], np.int32)
  batch = {"inputs": ids, "segment_ids": np.ones_like(ids), "type_ids": np.zeros_like(ids)}
  ours = model.trainable.model.apply({"params": model.params}, batch)
  assert max_diff(ours, hf(input_ids=torch.tensor(ids)).logits) <= ATOL


@pytest.mark.slow  # a T5 fine-tuned, then beam search through its adapters (~25 s here)
def test_encoder_decoder_generation_goes_through_the_adapters(tmp_path, monkeypatch):
  """Generation calls `encode` and `decode`, not `__call__`: the adapters act there too (the
  merged model encodes as the adapted one does)."""
  _, model = trained_with_lora(tmp_path, monkeypatch, "seq2seq_t5", targets=".*/(query|value|wi)")
  ids = np.asarray([model.tokenizer.encode("abc")], np.int32)
  unadapted = model.task.model(registry.build_model(model.family, model.model_config))
  merged = lora.merged(jax.device_get(model.params), model.lora)
  adapted = model.trainable.model.apply(
    {"params": model.params}, ids, np.ones_like(ids), method="encode"
  )
  plain = unadapted.apply({"params": merged}, ids, np.ones_like(ids), method="encode")
  base = unadapted.apply(
    {"params": without_adapters(model.params)}, ids, np.ones_like(ids), method="encode"
  )
  np.testing.assert_allclose(adapted, plain, atol=1e-5)
  assert np.abs(np.asarray(adapted) - np.asarray(base)).max() > 1e-6  # the adapters matter


def without_adapters(params):
  """The tree without its adapters: the base model the run trained them on."""
  flat = traverse_util.flatten_dict(jax.device_get(params))
  return traverse_util.unflatten_dict({k: v for k, v in flat.items() if not lora.is_adapter(k)})


@pytest.mark.parametrize(
  "mode, tolerance",
  [("int8", 0.03), pytest.param("nf4", 0.3, marks=pytest.mark.slow)],  # nf4: CI's slow run
)
def test_qlora_holds_the_frozen_base_quantized_and_bit_identical(mode, tolerance, tmp_path,
                                                                 monkeypatch):  # fmt: skip
  """QLoRA: every frozen kernel int8 or 4-bit (nf4), the head and adapters float; after
  steps the quantized base is unchanged; its first outputs within `tolerance` (of the largest
  logit) of the float base's; merged (dequantized base + adapters) equals adapted."""
  init, model = trained_with_lora(tmp_path, monkeypatch, "token_gpt", quantize_base=mode)
  is_q = quantize.is_quantized
  leaves = lambda tree: jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_q)[0]
  kernels = [
    (p, x) for p, x in leaves(model.params) if jax.tree_util.keystr(p).endswith("['kernel']")
  ]
  head = [p for p, x in kernels if "classifier" in jax.tree_util.keystr(p)]
  assert head and all(not is_q(x) for p, x in kernels if p in head)
  frozen = [x for p, x in kernels if p not in head]
  assert frozen and all(is_q(x) and x.how.qtype == mode for x in frozen)
  before = dict(leaves(init))
  for path, x in leaves(model.params):
    if is_q(x):
      np.testing.assert_array_equal(before[path].array.qvalue, x.array.qvalue)
  ids = np.asarray([model.tokenizer.encode("the EU rejects")], np.int32)
  batch = {"inputs": ids, "segment_ids": np.ones_like(ids), "type_ids": np.zeros_like(ids)}
  unadapted = model.task.model(registry.build_model(model.family, model.model_config))
  base = without_adapters(lora.merged(init, model.lora))  # B = 0 at the start
  start = model.trainable.model.apply({"params": jax.tree.map(jnp.asarray, init)}, batch)
  unquantized = unadapted.apply({"params": base}, batch)
  assert np.abs(start - unquantized).max() <= tolerance * np.abs(unquantized).max()
  np.testing.assert_allclose(
    unadapted.apply({"params": lora.merged(model.params, model.lora)}, batch),
    model.trainable.model.apply({"params": model.params}, batch),
    atol=1e-5,
  )
