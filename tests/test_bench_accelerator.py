"""bench/accelerator.py --smoke: the accelerator benchmark's script runs end to end on CPU (a
tiny shape; reference einsum vs the splash kernel in the Pallas interpreter)."""

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
