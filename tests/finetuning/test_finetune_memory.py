"""flaxlm.finetuning.memory and `finetune.py --dry_run`: a fine-tuning run's train step compiled
for its mesh without training, and what each part of its state holds on one device for full
fine-tuning, LoRA and QLoRA."""

import json

import pytest
import samples

from flaxlm.config import finetuning as config_finetune
from flaxlm.finetuning import memory

ALL_LINEAR = ".*/(query|key|value|out|wi|wo)"


def dry_run(tmp_path, model=None, **lora):
  c = samples.run_config(tmp_path, "sft_gpt")
  c.model.update(embed_dim=64, num_heads=4, mlp_dim=256, **(model or {}))
  c.mesh.update(data=2, fsdp=2, tensor=2)
  c.lora.update(lora)
  return memory.dry_run(config_finetune.from_config_dict(c))


def test_full_fine_tuning_against_qlora_on_a_sharded_mesh(tmp_path):
  text, full = dry_run(tmp_path)
  assert "'data': 2, 'fsdp': 2, 'tensor': 2" in text and "full fine-tuning" in text
  assert full["trained"] == full["parameters"] and full["frozen_bytes"] == 0
  # AdamW keeps two moments of every trained parameter (plus a step count)
  assert 2 * full["trained_bytes"] <= full["optimizer_bytes"] < 2 * full["trained_bytes"] + 64
  assert full["peak_bytes"] >= full["trained_bytes"] + full["optimizer_bytes"]

  text, qlora = dry_run(tmp_path, rank=2, alpha=4.0, targets=ALL_LINEAR, quantize_base="int8")
  assert "LoRA rank 2 over a int8 base (QLoRA)" in text
  # the block kernels (64 x 64 x 4 + 2 x 64 x 256 = 49,152) gain r (d_in + d_out) each
  assert qlora["parameters"] - full["parameters"] == 2 * (4 * 128 + 2 * 320)
  assert qlora["trained"] < 0.5 * full["trained"]  # the embeddings and blocks stay frozen
  assert qlora["optimizer_bytes"] < 0.5 * full["optimizer_bytes"]
  # int8 kernels: a quarter of their f32 bytes (and a scale per output channel)
  assert qlora["frozen_bytes"] < full["trained_bytes"] - 49_152 * 3 / 8


def test_qlora_of_a_bf16_scanned_decoder_with_a_frozen_tiled_lm_head(tmp_path):
  """llama_1b's recipe (configs/finetune_dialogsum_llama_1b_qlora.py) in small: bf16 compute
  over scanned layers (the adapters' f32 term must not promote the carry), the LM head frozen
  and quantized but read whole by the vocabulary-tiled loss."""
  model = dict(dtype="bfloat16", scan_layers=True, num_layers=2, num_vocab_tiles=2)
  text, qlora = dry_run(
    tmp_path, model, rank=2, alpha=4.0, targets=ALL_LINEAR, quantize_base="int8",
    modules_to_save="(?!)",
  )  # fmt: skip
  # adapters alone train: 2 layers x (4 x 2 (64 + 64) + 2 x 2 (64 + 256)), kept in f32
  assert qlora["trained"] == 2 * (4 * 256 + 2 * 640)
  assert qlora["trained_dtypes"] == ["float32"]


@pytest.mark.slow  # a process that compiles the sharded step (~20 s)
def test_finetune_py_dry_run_writes_nothing(scripts, tmp_path):
  c = samples.run_config(tmp_path, "sft_gpt")
  config = tmp_path / "sft.py"
  config.write_text(
    f"import ml_collections\ndef get_config():\n  return ml_collections.ConfigDict({c.to_dict()!r})\n"
  )
  workdir = tmp_path / "never_created"
  done = scripts.run(
    "finetune.py", f"--config={config}", f"--workdir={workdir}", "--dry_run",
    "--config.lora.rank=2", "--config.mesh.data=1", "--config.mesh.fsdp=2", devices=2, tiny=False,
  )  # fmt: skip
  assert done.returncode == 0, done.stderr[-3000:]
  assert "trained parameters" in done.stdout and "peak per device" in done.stdout
  figures = json.loads(done.stdout.strip().splitlines()[-1])
  assert figures["how"] == "LoRA rank 2" and figures["devices"] == 2
  assert not workdir.exists()
