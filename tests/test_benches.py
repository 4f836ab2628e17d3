"""The benchmarks' scripts run end to end on CPU at a tiny shape (--smoke): bench/accelerator.py
(reference einsum vs the splash kernel in the Pallas interpreter) and bench/decode.py."""

import json
import math

import pytest


@pytest.mark.slow  # ~70 s here: two train steps compiled, one of them an interpreted kernel
def test_accelerator_bench_smoke(scripts):
  proc = scripts.run("bench/accelerator.py", "--smoke", tiny=False, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  assert [r["attention"] for r in rows] == ["einsum", "splash_interpret"]
  for r in rows:
    assert r["tokens_per_sec"] > 0 and r["compiled_peak_bytes_estimate"] > 0
    assert math.isfinite(r["last_loss"]) and r["mfu"] is None  # no known peak on CPU
  # Same weights, same batch: the first loss does not depend on the attention kernel.
  assert rows[0]["first_loss"] == pytest.approx(rows[1]["first_loss"], rel=1e-5)
  assert rows[1]["mfu_maxtext"] is None and rows[0]["last_loss"] < rows[0]["first_loss"]


@pytest.mark.slow  # ~30 s: HF generate and three flaxlm decoders of a 2-layer, 64-wide GPT-2
def test_decode_bench_smoke(scripts):
  proc = scripts.run("bench/decode.py", "--smoke", tiny=False, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["read_gb_s"] > 0
  for batch in ("batch_1", "batch_8"):
    engines = out[batch]
    assert set(engines) == {"hf_f32", "flaxlm_f32", "flaxlm_bf16", "flaxlm_int8"}
    assert engines["hf_f32"]["vs_hf"] == 1.0
    f32, int8 = engines["flaxlm_f32"]["mb_per_step"], engines["flaxlm_int8"]["mb_per_step"]
    assert 0 < int8 < f32 and all(e["tokens_per_s"] > 0 for e in engines.values())
