"""Weight-only post-training quantization (flaxlm/nn/quantize.py, flaxlm/train/ptq.py): every
projection kernel int8 (per output channel) or int4 (grouped), outputs within a stated
tolerance of float, the same on a 2x2x2 mesh as on one device, and `finetune.py
--mode=evaluate|predict --quantize=` printing the float figures beside."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util
from samples import run_config

from flaxlm.config import finetuning as config_finetune
from flaxlm.errors import ConfigError
from flaxlm.finetuning import load as finetuned
from flaxlm.finetuning import run as finetuning
from flaxlm.nn import quantize

# max |logit difference| / max |float logit|: int8 per channel keeps ~1/127 of each channel's
# range; int4 in groups ~1/7 of a group's.
TOLERANCE = {"int8": 0.03, "int4": 0.3}


def trained(tmp_path, name, **keys):
  c = run_config(tmp_path, name, num_train_steps=2)
  c.update(keys)
  return c, finetuning.train(config_finetune.from_config_dict(c), tmp_path / name)["model"]


def outputs(model, ids):
  batch = {"inputs": ids, "segment_ids": np.ones_like(ids), "type_ids": np.zeros_like(ids)}
  return np.asarray(model.trainable.model.apply({"params": model.params}, batch))


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_every_kernel_is_quantized_and_outputs_stay_near_float(mode, tmp_path):
  _, model = trained(tmp_path, "token_gpt")
  q = finetuned.quantized(model, mode)
  leaves = jax.tree_util.tree_leaves_with_path(q.params)
  qvalues = [x for path, x in leaves if "qvalue" in jax.tree_util.keystr(path)]
  flat = traverse_util.flatten_dict(jax.device_get(model.params))
  assert len(qvalues) == sum(k[-1] == "kernel" for k in flat) > 0
  assert all(mode in str(x.dtype) for x in qvalues)
  assert quantize.weight_bytes(q.params) < quantize.weight_bytes(model.params)
  ids = np.asarray([model.tokenizer.encode("the EU rejects")], np.int32)
  want, got = outputs(model, ids), outputs(q, ids)
  assert 0 < np.abs(got - want).max() <= TOLERANCE[mode] * np.abs(want).max()


@pytest.mark.slow  # two fine-tuning runs and their evaluations (~35 s here)
def test_quantized_evaluation_on_a_2x2x2_mesh_equals_one_device(tmp_path):
  c, _ = trained(tmp_path, "seq2seq_t5", mesh={"data": 2, "fsdp": 2, "tensor": 2})
  model = finetuned.load(tmp_path / "seq2seq_t5")
  sharded = finetuned.quantized(model, "int8")
  one = jax.sharding.Mesh(
    np.asarray(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor")
  )
  single = finetuned.quantized(finetuned.load(tmp_path / "seq2seq_t5", mesh=one), "int8")
  ids = np.asarray([model.tokenizer.encode("abc")] * 8, np.int32)
  encode = lambda m: np.asarray(
    m.trainable.model.apply({"params": m.params}, ids, np.ones_like(ids), method="encode")
  )
  assert dict(sharded.trainable.mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
  np.testing.assert_allclose(encode(sharded), encode(single), atol=1e-5)


@pytest.mark.slow  # three processes
def test_finetune_evaluate_and_predict_quantized_through_the_cli(scripts, tmp_path):
  c, _ = trained(tmp_path, "token_gpt")
  workdir = tmp_path / "token_gpt"
  done = scripts.run("finetune.py", f"--workdir={workdir}", "--mode=evaluate",
                     f"--eval_data={c.eval_data}", "--quantize=int8", tiny=False)  # fmt: skip
  assert done.returncode == 0, done.stderr[-3000:]
  line, metrics = done.stdout.strip().splitlines()[-2:]
  assert line.startswith("int8 weights: eval_accuracy") and "(float " in line, line
  metrics = json.loads(metrics)
  assert metrics["quantize"] == "int8" and "eval_accuracy" in metrics["float"]
  assert metrics["param_bytes"]["int8"] < metrics["param_bytes"]["float"]
  assert len(list(workdir.glob("eval_*_int8.json"))) == 1
  out = tmp_path / "pred.jsonl"
  done = scripts.run("finetune.py", f"--workdir={workdir}", "--mode=predict", "--quantize=int4",
                     f"--eval_data={c.eval_data}", f"--output={out}", tiny=False)  # fmt: skip
  assert done.returncode == 0, done.stderr[-3000:]
  assert len(out.read_text().splitlines()) == 16


def test_an_unknown_mode_is_refused_before_loading(tmp_path):
  with pytest.raises(ConfigError, match=r"--quantize='int3'; choose one of \['int8', 'int4'\]"):
    finetuned.evaluate(tmp_path / "none", "tsv:x.tsv", quantize_to="int3")
