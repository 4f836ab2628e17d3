"""flaxlm.train.reporting: throughput and MFU under both FLOP conventions, and which runs report
MaxText's."""

import jax
import pytest

from flaxlm.config import default_config, from_config_dict, model_preset
from flaxlm.models import gpt
from flaxlm.pretraining import run as pretraining
from flaxlm.train import reporting


def test_throughput_reports_each_convention_under_its_own_key(monkeypatch):
  clock = iter([0.0, 2.0])
  monkeypatch.setattr(reporting.time, "perf_counter", lambda: next(clock))
  flops = reporting.FlopsPerToken(palm=6e9, maxtext=5e9)
  meter = reporting.Throughput(1000, flops, peak_flops=1e13)
  for _ in range(4):
    meter.tick()
  out = meter.measure()  # 4 steps x 1000 tokens in 2 s
  assert out["tokens_per_sec"] == 2000
  assert out["mfu"] == pytest.approx(2000 * 6e9 / 1e13)
  assert out["mfu_maxtext"] == pytest.approx(2000 * 5e9 / 1e13)
  clock = iter([0.0, 2.0])
  plain = reporting.Throughput(1000, 6e9, peak_flops=1e13)  # a float: PaLM only, as before
  plain.tick()
  out = plain.measure()
  assert out["mfu"] == pytest.approx(500 * 6e9 / 1e13) and "mfu_maxtext" not in out


@pytest.mark.parametrize(
  "family,backend,dtype,reported",
  [
    ("gpt", "tpu", "bfloat16", True),  # splash skips the masked blocks
    ("gpt", "gpu", "bfloat16", True),  # cuDNN
    ("gpt", "gpu", "float32", False),  # XLA's dense path computes them all
    ("gpt", "cpu", "float32", False),
    ("bert", "tpu", "bfloat16", False),  # not causal
  ],
)
def test_maxtext_flops_only_where_a_causal_kernel_skips_blocks(
  monkeypatch, family, backend, dtype, reported
):
  c = default_config()
  c.model_family = family
  if family == "bert":
    c.model = model_preset("bert", "bert_tiny")
  c.model.dtype = dtype
  c.model.vocab_size = 512
  run = from_config_dict(c)
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  flops = pretraining.maxtext_flops(run, run.model)
  assert (flops > 0) == reported
  if reported:  # the same model, counted with half the attention FLOPs
    assert flops == gpt.flops_per_token(run.model, run.data.seq_len, causal=True)
    assert flops < gpt.flops_per_token(run.model, run.data.seq_len)
