"""Will a run fit? The train step compiled ahead of time, and XLA's memory analysis of it.

`python train.py --config=<file> --workdir=<dir> --dry_run` builds the run's sharded state
and train step for the configured mesh from abstract shapes alone (no data is read; the
vocabulary size comes from the tokenizer config, the batch from one synthetic example of
the objective), compiles it with `jit(...).lower(...).compile()` and prints what XLA's buffer
assignment says one device holds at its peak, against that device's memory.

The mesh is the real one (TPU/GPU), or CPU devices emulated with
`XLA_FLAGS=--xla_force_host_platform_device_count=N`. On CPU the program analysed is the
sharded one, but compiled by XLA:CPU, whose fusion, layouts and scheduling differ from the
accelerators': its peak is an estimate of theirs, printed against a table of device memories.
What decides the peak: parameters + Adam moments (sharded by FSDP/tensor parallelism), the
activations kept for the backward pass of one microbatch (`accum_steps`, `remat_policy`) and
the logits (`num_vocab_tiles`).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from flaxlm.data.corpus import Pairs
from flaxlm.data.tokenizers.config import TokenizerConfig, reserved_names
from flaxlm.nn import attention, sharding
from flaxlm.pretraining import run as pretraining
from flaxlm.train import validation

GiB = 2**30

# Memory per device (GiB), by device_kind prefix. GPUs: JAX's allocator takes
# XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.75) of it; `usable_bytes` applies that.
DEVICE_MEMORY_GIB = {
  "TPU v4": 32,
  "TPU v5 lite": 16,  # v5e
  "TPU v5e": 16,
  "TPU v5p": 95,
  "TPU v5": 95,  # v5p reports "TPU v5"
  "TPU v6 lite": 32,  # v6e (Trillium)
  "TPU v6e": 32,
  "NVIDIA A100-SXM4-40GB": 40,
  "NVIDIA A100-SXM4-80GB": 80,
  "NVIDIA A100": 40,
  "NVIDIA H100": 80,
  "NVIDIA H200": 141,
}
# The devices a CPU dry run is compared against (what the accelerator configs name).
TARGETS = ("TPU v4", "TPU v5e", "TPU v5p", "NVIDIA A100-SXM4-80GB", "NVIDIA H100", "NVIDIA H200")


def gpu_fraction() -> float:
  return float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75"))


def usable_bytes(kind: str) -> int | None:
  """What one device of this kind can hold (None: not in the table)."""
  for name in sorted(DEVICE_MEMORY_GIB, key=len, reverse=True):
    if kind.startswith(name):
      fraction = gpu_fraction() if name.startswith("NVIDIA") else 1.0
      return int(DEVICE_MEMORY_GIB[name] * GiB * fraction)
  return None


def device_bytes(device) -> int | None:
  """The allocator's limit where the runtime reports it, else the table's figure."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return usable_bytes(device.device_kind)


class SyntheticTokenizer:
  """What objectives read of a tokenizer, with the reserved ids of `config`'s layout."""

  def __init__(self, config: TokenizerConfig, vocab_size: int):
    self.special_ids = {name: i for i, name in enumerate(sorted(reserved_names(config)))}
    self.vocab_size = vocab_size
    self.eos_id = self.special_ids.get("eos")
    self.pad_id = self.special_ids.get("pad")

  def word_starts(self) -> np.ndarray:
    return np.ones(self.vocab_size, np.int32)


def example_batch(run, objective, tokenizer, rows: int) -> dict[str, np.ndarray]:
  """A batch of `rows` copies of one example the objective makes from synthetic tokens:
  exactly the keys, shapes and dtypes the pipeline would hand the train step."""
  rng = np.random.default_rng(0)
  low = len(tokenizer.special_ids)
  draw = lambda n: rng.integers(low, tokenizer.vocab_size, n).astype(np.int32)
  if objective.trains_on == "pairs":
    n, half = 4 * objective.group, max(run.data.seq_len // (2 * objective.group), 1)
    offsets = np.arange(0, half * (n + 1), half, dtype=np.int64)
    data = Pairs(draw(half * n), offsets, draw(half * n), offsets)
  else:
    data = draw(8 * (run.data.seq_len + 2))
  records = objective.records(data, run.data, 0)
  group = [records[i] for i in range(objective.group)]
  example = objective.example(group if objective.group > 1 else group[0], rng)
  return {k: np.stack([np.asarray(v)] * rows) for k, v in example.items()}


@dataclasses.dataclass(frozen=True)
class MemoryReport:
  """Per-device bytes of one compiled program (XLA's `memory_analysis`)."""

  arguments: int
  outputs: int
  aliased: int  # outputs written over donated arguments (the new train state)
  temporaries: int
  code: int
  peak: int
  device_kind: str
  device_bytes: int | None

  @classmethod
  def of(cls, compiled, device) -> MemoryReport:
    m = compiled.memory_analysis()
    live = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    peak = max(getattr(m, "peak_memory_in_bytes", 0), live + m.temp_size_in_bytes)
    return cls(
      m.argument_size_in_bytes,
      m.output_size_in_bytes,
      m.alias_size_in_bytes,
      m.temp_size_in_bytes,
      m.generated_code_size_in_bytes,
      peak,
      device.device_kind,
      None if device.platform == "cpu" else device_bytes(device),
    )

  def lines(self) -> list[str]:
    out = [
      f"  arguments (state + batch) {self.arguments / GiB:9.2f} GiB",
      f"  outputs                   {self.outputs / GiB:9.2f} GiB",
      f"  aliased (donated state)   {self.aliased / GiB:9.2f} GiB",
      f"  temporaries               {self.temporaries / GiB:9.2f} GiB",
      f"  generated code            {self.code / GiB:9.2f} GiB",
      f"  peak per device           {self.peak / GiB:9.2f} GiB",
    ]
    if self.device_bytes:
      verdict = "fits" if self.peak <= self.device_bytes else "DOES NOT FIT"
      out.append(
        f"  {self.device_kind}: {self.device_bytes / GiB:.1f} GiB usable -> {verdict} "
        f"({self.peak / self.device_bytes:.0%})"
      )
      return out
    out.append(
      f"  {self.device_kind}: no device memory to compare (CPU). XLA:CPU's analysis of the "
      "sharded program estimates an accelerator's; against one device of each:"
    )
    for kind in TARGETS:
      limit = usable_bytes(kind)
      verdict = "fits" if self.peak <= limit else "does not fit"
      out.append(
        f"    {kind:24s} {limit / GiB:6.1f} GiB usable: {verdict} ({self.peak / limit:.0%})"
      )
    return out


def dry_run(run) -> tuple[str, MemoryReport]:
  """Compiles the run's train step for its mesh from abstract shapes; (report text, numbers)."""
  validation.check_loop_keys(run)
  validation.check_attention(run.model, run.data.seq_len)
  validation.check_lengths(run.model, {"seq_len": run.data.seq_len})
  tokenizer = SyntheticTokenizer(run.tokenizer, validation.vocab_estimate(run.tokenizer) or 256)
  objective = pretraining.run_objective(run, tokenizer)
  trainable = pretraining.build(run, tokenizer.vocab_size)
  mesh = trainable.mesh
  batch_sharding = sharding.batch_sharding(mesh)
  batch = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
    for k, v in example_batch(run, objective, tokenizer, run.batch_size).items()
  }
  with trainable.context():
    compiled = trainable.jitted_train_step.lower(trainable.abstract_state, batch).compile()
  report = MemoryReport.of(compiled, mesh.devices.flat[0])
  c = trainable.model.config
  n_params = sum(x.size for x in jax.tree.leaves(trainable.abstract_state.params))
  accum = run.step.accum_steps
  shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in batch.items())
  text = "\n".join(
    [
      f"dry run: {run.model_family} {n_params / 1e6:.1f}M parameters, vocab {c.vocab_size} "
      f"(synthetic tokenizer), mesh {dict(mesh.shape)} of {mesh.devices.size} "
      f"{mesh.devices.flat[0].platform} devices; no data read",
      f"  batch {shapes}; accum_steps {accum} ({run.batch_size // accum} rows per microbatch); "
      f"dtype {c.dtype}; remat {c.remat_policy}; scan {c.scan_layers}; "
      f"num_vocab_tiles {getattr(c, 'num_vocab_tiles', 1)}; attention "
      f"{attention.resolve(c.attention_impl, c.compute_dtype)}",
      "per-device memory of the compiled train step (XLA memory analysis):",
      *report.lines(),
    ]
  )
  return text, report
