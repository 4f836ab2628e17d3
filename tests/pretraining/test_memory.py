"""flaxlm.pretraining.memory and `train.py --dry_run`: the train step compiles for the configured mesh from
abstract shapes (no data is read), and XLA's per-device memory analysis moves the way the
memory plan says it should."""

import functools

import jax
import pytest

from flaxlm.config import default_config, from_config_dict
from flaxlm.pretraining import memory

GiB = 2**30


def run_config(**overrides):
  c = default_config()
  c.dataset = "text:/no/such/dir/*.txt"  # a dry run never reads it
  c.tokenizer.kind = "byte"
  c.model.update(num_layers=2, embed_dim=64, num_heads=4, mlp_dim=256, max_len=256)
  c.seq_len, c.batch_size, c.eval_batch_size = 256, 32, 8
  c.mesh.update(data=1, fsdp=-1, tensor=2)  # 4 x 2 on the 8 emulated devices
  for key, value in overrides.items():
    target = c
    *path, last = key.split(".")
    for part in path:
      target = target[part]
    target[last] = value
  return from_config_dict(c)


def test_dry_run_compiles_the_sharded_step_without_data():
  text, report = memory.dry_run(run_config())
  assert "no data read" in text and "'fsdp': 4, 'tensor': 2" in text
  assert "batch inputs (32, 256), targets (32, 256), weights (32, 256)" in text
  # Parameters + Adam moments of a 0.2M-parameter model split 8 ways, plus the batch.
  assert 0 < report.arguments < GiB and report.peak >= report.arguments + report.temporaries
  assert report.device_bytes is None  # CPU: compared against the table instead
  assert "TPU v5e" in text and "NVIDIA H100" in text


# A vocabulary-heavy shape (logits dominate) and an activation-heavy one (4 wider layers,
# scanned as the accelerator configs run them: XLA:CPU keeps unrolled layers' remat values
# alive regardless, 92 MiB with or without remat, against 152 -> 33 MiB scanned).
BASES = {
  "logits": {"tokenizer.kind": "sentencepiece", "tokenizer.vocab_size": 16384},
  "activations": {"model.num_layers": 4, "model.mlp_dim": 1024, "model.scan_layers": True},
}


@functools.cache
def temporaries(base: str, knob: str = "", value=None) -> int:
  overrides = dict(BASES[base], **({knob: value} if knob else {}))
  return memory.dry_run(run_config(**overrides))[1].temporaries


@pytest.mark.slow  # five compilations of the sharded step, ~2 minutes here
@pytest.mark.parametrize(
  "base,knob,value",
  [
    ("activations", "accum_steps", 4),
    ("logits", "model.num_vocab_tiles", 8),
    ("activations", "model.remat_policy", "full"),
  ],
)
def test_each_memory_knob_lowers_the_peak(base, knob, value):
  """Microbatches, vocabulary tiles and remat each shrink what one device holds at once."""
  before, after = temporaries(base), temporaries(base, knob, value)
  assert after < 0.8 * before, (before, after)


def test_device_memory_table():
  assert memory.usable_bytes("TPU v5 lite") == 16 * GiB
  assert memory.usable_bytes("TPU v4") == 32 * GiB
  h100 = memory.usable_bytes("NVIDIA H100 80GB HBM3")
  assert h100 == int(80 * GiB * memory.gpu_fraction())  # JAX's allocator takes 75% by default
  assert memory.usable_bytes("NVIDIA A100-SXM4-40GB") < memory.usable_bytes("NVIDIA A100-SXM4-80GB")
  assert memory.usable_bytes("cpu") is None
  assert memory.device_bytes(jax.devices()[0]) is None


def test_train_py_dry_run(scripts):
  proc = scripts.run(
    "train.py",
    "--workdir=/nonexistent/never_created",
    "--dry_run",
    "--config.dataset=text:/no/such/*.txt",
    "--config.mesh.data=1",
    "--config.mesh.fsdp=2",
    devices=2,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "peak per device" in proc.stdout and "'fsdp': 2" in proc.stdout
