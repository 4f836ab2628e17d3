"""What a run reports: metrics.jsonl, TensorBoard events, a progress bar, throughput and MFU.

metrics.jsonl holds one JSON object per logged step with the run vocabulary of STYLE.md:
`step, loss, learning_rate, grad_norm, tokens_per_sec, mfu` and `eval_*` on eval steps.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax

# Dense bf16 peak FLOP/s per device (vendor figures). MFU is reported only where known.
PEAK_FLOPS = {
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,  # v5e
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v5": 459e12,
  "TPU v6 lite": 918e12,  # v6e (Trillium)
  "TPU v6e": 918e12,
  "NVIDIA A100": 312e12,
  "NVIDIA H100": 989e12,
  "NVIDIA H200": 989e12,
}


def device_peak_flops(override: float = 0.0) -> float | None:
  """Peak FLOP/s of all devices together, or None when the device kind is not in the table."""
  if override:
    return override * jax.device_count()
  kind = jax.devices()[0].device_kind
  for name in sorted(PEAK_FLOPS, key=len, reverse=True):
    if kind.startswith(name) or name in kind:
      return PEAK_FLOPS[name] * jax.device_count()
  return None


class Throughput:
  """Tokens/s and MFU over the steps since the last `measure()` call."""

  def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float | None):
    self.tokens_per_step, self.flops_per_token, self.peak = (
      tokens_per_step,
      flops_per_token,
      peak_flops,
    )
    self._t, self._steps = time.perf_counter(), 0

  def tick(self):
    self._steps += 1

  def pause(self):
    """Exclude what follows (eval, checkpointing) until `resume()`."""
    self._paused_at = time.perf_counter()

  def resume(self):
    self._t += time.perf_counter() - self._paused_at

  def measure(self) -> dict:
    now = time.perf_counter()
    dt, steps = now - self._t, self._steps
    self._t, self._steps = now, 0
    if steps == 0 or dt <= 0:
      return {}
    tps = steps * self.tokens_per_step / dt
    out = {"tokens_per_sec": tps, "step_time": dt / steps}
    if self.peak:
      out["mfu"] = tps * self.flops_per_token / self.peak
    return out


class MetricsWriter:
  """Appends to <workdir>/metrics.jsonl and TensorBoard on process 0; others write nothing."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    try:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:  # TensorBoard events are optional; metrics.jsonl is not
      self._tb = None

  def write(self, step: int, values: dict):
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _plain(v) for k, v in values.items()})
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()

  def close(self):
    if self.enabled:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


def _plain(v):
  v = v.item() if hasattr(v, "item") else v
  return float(v) if isinstance(v, float) else v


class Progress:
  """One-line progress (step, loss, tokens/s, ETA) on a terminal; plain lines otherwise."""

  def __init__(self, total: int, start: int):
    self.total, self.start, self.t0 = total, start, time.perf_counter()
    self.enabled = jax.process_index() == 0
    self.tty = sys.stderr.isatty()

  def update(self, step: int, values: dict):
    if not self.enabled:
      return
    done = step - self.start
    elapsed = time.perf_counter() - self.t0
    eta = elapsed / max(done, 1) * (self.total - step)
    parts = [f"step {step}/{self.total}"]
    for key, fmt in (
      ("loss", "{:.4f}"),
      ("eval_loss", "{:.4f}"),
      ("tokens_per_sec", "{:,.0f} tok/s"),
      ("mfu", "MFU {:.1%}"),
    ):
      if key in values:
        parts.append((key + " " if "loss" in key else "") + fmt.format(values[key]))
    parts.append(f"ETA {_hms(eta)}")
    line = " | ".join(parts)
    if self.tty:
      width = 30
      filled = int(width * step / max(self.total, 1))
      sys.stderr.write("\r[" + "#" * filled + "." * (width - filled) + "] " + line + "\033[K")
    else:
      sys.stderr.write(line + "\n")
    sys.stderr.flush()

  def close(self):
    if self.enabled and self.tty:
      sys.stderr.write("\n")


def _hms(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
