"""What a run reports: metrics.jsonl, TensorBoard events, a progress bar, throughput and MFU.

metrics.jsonl holds one JSON object per logged step with the run vocabulary of STYLE.md:
`step, loss, learning_rate, grad_norm, tokens_per_sec` (and `examples_per_sec` for tasks),
`mfu` where the device's peak is known, and `eval_*` on eval steps.

MFU conventions: `mfu` counts model FLOPs as PaLM's appendix B does (causal attention not
discounted); `mfu_maxtext` (decoders whose causal attention kernel skips the masked blocks:
splash, cuDNN) halves the causal attention FLOPs as MaxText does, i.e. counts what such a
kernel computes. The second is lower: a model's useful work is the same, only the count of it
changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import sys
import time

import jax

from flaxlm.errors import ConfigError
from flaxlm.workdir import Workdir, is_url

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


@dataclasses.dataclass(frozen=True)
class FlopsPerToken:
  """Training FLOPs per token under each convention; `maxtext` 0 means not reported."""

  palm: float
  maxtext: float = 0.0


class Throughput:
  """Tokens/s (examples/s) and MFU over the steps since the last `measure()` call."""

  def __init__(
    self,
    tokens_per_step: int,
    flops_per_token: float | FlopsPerToken,
    peak_flops: float | None,
    examples_per_step: int = 0,
  ):
    if not isinstance(flops_per_token, FlopsPerToken):
      flops_per_token = FlopsPerToken(flops_per_token)
    self.tokens_per_step, self.flops_per_token, self.peak = (
      tokens_per_step,
      flops_per_token,
      peak_flops,
    )
    self.examples_per_step = examples_per_step
    self._t, self._steps = time.perf_counter(), 0

  def tick(self):
    self._steps += 1

  def pause(self):
    """Exclude what follows (eval, checkpointing) until `resume()`."""
    self._paused_at = time.perf_counter()

  def resume(self):
    self._t += time.perf_counter() - self._paused_at

  @contextlib.contextmanager
  def paused(self):
    """Leaves the block (an evaluation, a checkpoint) out of the throughput."""
    self.pause()
    try:
      yield
    finally:
      self.resume()

  def measure(self) -> dict:
    now = time.perf_counter()
    dt, steps = now - self._t, self._steps
    self._t, self._steps = now, 0
    if steps == 0 or dt <= 0:
      return {}
    tps = steps * self.tokens_per_step / dt
    out = {"step_time": dt / steps}
    if self.tokens_per_step:
      out["tokens_per_sec"] = tps
    if self.examples_per_step:
      out["examples_per_sec"] = steps * self.examples_per_step / dt
    if self.peak and self.flops_per_token.palm:
      out["mfu"] = tps * self.flops_per_token.palm / self.peak
    if self.peak and self.flops_per_token.maxtext:
      out["mfu_maxtext"] = tps * self.flops_per_token.maxtext / self.peak
    return out


class MetricsWriter:
  """Appends to <workdir>/metrics.jsonl and TensorBoard on process 0; others write nothing.

  Object stores cannot append, so a workdir in a bucket gets the whole file rewritten on each
  write (it is small) and no TensorBoard events."""

  def __init__(self, workdir: Workdir):
    self.enabled = jax.process_index() == 0
    self._tb = None
    if not self.enabled:
      return
    self.path = workdir.metrics_file
    self._remote = is_url(self.path)
    if self._remote:
      self._rows = self.path.read_text().splitlines(True) if self.path.exists() else []
      return
    self._jsonl = open(self.path, "a")  # noqa: SIM115 - closed in close()
    try:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(str(workdir.tensorboard))
    except ImportError:  # TensorBoard events are optional; metrics.jsonl is not
      self._tb = None

  def write(self, step: int, values: dict):
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _plain(v) for k, v in values.items()})
    line = json.dumps(row) + "\n"
    if self._remote:
      self._rows.append(line)
      self.path.write_text("".join(self._rows))
      return
    self._jsonl.write(line)
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()

  def close(self):
    if self.enabled and not self._remote:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


def read_metrics(workdir: Workdir) -> list[dict]:
  """The rows of metrics.jsonl (a resumed run's repeated steps included)."""
  if not workdir.metrics_file.exists():
    return []
  return [json.loads(line) for line in workdir.metrics_file.read_text().splitlines() if line]


def _plain(v):
  v = v.item() if hasattr(v, "item") else v
  return float(v) if isinstance(v, float) else v


class Progress:
  """One-line progress (step, loss, tokens/s, ETA) on a terminal; plain lines otherwise."""

  def __init__(self, total: int, start: int, metric: str = ""):
    self.total, self.start, self.t0 = total, start, time.perf_counter()
    self.metric = metric if metric != "eval_loss" else ""  # the dev metric, shown beside losses
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
      (self.metric, "{:.4f}"),
      ("tokens_per_sec", "{:,.0f} tok/s"),
      ("examples_per_sec", "{:,.1f} ex/s"),
      ("mfu", "MFU {:.1%}"),
    ):
      if key in values:
        named = "loss" in key or key == self.metric
        parts.append((key + " " if named else "") + fmt.format(values[key]))
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


def pyplot(needed_by: str = ""):
  """matplotlib.pyplot on the Agg backend; None when matplotlib is missing (plots are extras),
  or, for `needed_by` (a feature whose output is the picture), an error naming the install."""
  try:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
  except ImportError:
    if needed_by:
      raise ConfigError(
        f"{needed_by} draws with matplotlib: pip install 'flaxlm[{needed_by}]'"
      ) from None
    logging.getLogger("flaxlm").info("plots skipped: pip install 'flaxlm[finetune]' for matplotlib")
    return None
  return plt


def save_figure(fig, path, dpi: int = 100) -> tuple[int, int]:
  """Writes `fig` as a PNG of exactly its size in inches x `dpi` (no tight cropping, so the
  size is known: returned as (width, height) pixels) and closes it."""
  width, height = (round(v * dpi) for v in fig.get_size_inches())
  with open(path, "wb") as f:
    fig.savefig(f, dpi=dpi)
  pyplot().close(fig)
  return width, height


def plot_learning_curve(workdir: Workdir, metric: str) -> None:
  """<workdir>/learning_curve.png: training loss by step, and the dev metric beside it."""
  plt = pyplot()
  rows = {r["step"]: r for r in read_metrics(workdir)}  # a resumed run's repeats: the last
  if plt is None or not rows:
    return
  steps = sorted(rows)
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.plot(steps, [rows[s].get("loss_avg", rows[s]["loss"]) for s in steps], label="train loss")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  evals = [s for s in steps if metric in rows[s]]
  if evals:
    other = ax.twinx()
    other.plot(evals, [rows[s][metric] for s in evals], "o-", color="tab:orange", label=metric)
    other.set_ylabel(metric)
    other.legend(loc="upper right")
  ax.legend(loc="upper left")
  ax.set_title("learning curve")
  fig.tight_layout()
  with (workdir.path / "learning_curve.png").open("wb") as f:
    fig.savefig(f, dpi=100)
  plt.close(fig)


def plot_confusion_matrix(path, matrix: list[list[int]], labels: list[str]) -> None:
  """A confusion matrix (rows: true label, columns: predicted) with the counts written in."""
  plt = pyplot()
  if plt is None:
    return
  n = len(labels)
  fig, ax = plt.subplots(figsize=(2 + 0.6 * n, 1.6 + 0.6 * n))
  ax.imshow(matrix, cmap="Blues")
  ax.set_xticks(range(n), labels, rotation=45, ha="right")
  ax.set_yticks(range(n), labels)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  peak = max(max(row) for row in matrix) or 1
  for i in range(n):
    for j in range(n):
      color = "white" if matrix[i][j] > peak / 2 else "black"
      ax.text(j, i, str(matrix[i][j]), ha="center", va="center", color=color)
  fig.tight_layout()
  with path.open("wb") as f:
    fig.savefig(f, dpi=100)
  plt.close(fig)


def data_name(spec: str) -> str:
  """'tsv:../sst2/dev.tsv' -> 'dev' (names eval_<name>.json)."""
  base = spec.partition(":")[2].rstrip("/").split("/")[-1].split(":")[0]
  return base.rsplit(".", 1)[0] if "." in base else base or "data"


def write_eval_report(workdir: Workdir, name: str, metrics: dict, labels=None) -> None:
  """<workdir>/eval_<name>.json, and confusion_<name>.png when the metrics hold a confusion
  matrix over `labels` (classification)."""
  if jax.process_index() != 0:
    return
  (workdir.path / f"eval_{name}.json").write_text(json.dumps(metrics, indent=1) + "\n")
  if "eval_confusion_matrix" in metrics and labels:
    plot_confusion_matrix(
      workdir.path / f"confusion_{name}.png", metrics["eval_confusion_matrix"], labels
    )


def log_task_model(trainable, family: str, n_train: int, n_dev: int) -> None:
  """One log line: the task model's size, the data's and the mesh."""
  if jax.process_index() != 0:
    return
  n_params = sum(x.size for x in jax.tree.leaves(trainable.abstract_state.params))
  logging.getLogger("flaxlm").info(
    "%s task model: %.2fM parameters (%.2fM trained), %d training and %d dev examples, mesh %s",
    family,
    n_params / 1e6,
    trainable.num_trainable / 1e6,
    n_train,
    n_dev,
    dict(trainable.mesh.shape),
  )
