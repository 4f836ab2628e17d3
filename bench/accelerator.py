"""Training throughput, MFU and peak memory on a GPU or TPU: GPT-2 small and a llama_1b-shaped
decoder, each with the reference attention and with the fused kernel, on synthetic tokens.

  python bench/accelerator.py            # a GPU or TPU host: 4 cases, under 8 minutes
  python bench/accelerator.py --smoke    # any CPU: a tiny shape, einsum vs splash_interpret

Each case runs in its own process (so memory peaks do not mix): builds the model as its
config does (bf16, scanned layers, `minimal` remat, vocabulary-tiled loss) on a mesh of every
local device (FSDP), compiles the train step ahead of time (XLA's per-device memory analysis),
runs `--warmup` steps and then times `--steps` steps on one fixed synthetic batch, and prints
one JSON line: tokens/s, step time, MFU (PaLM's count; MaxText's, which halves causal
attention FLOPs, for the fused causal kernels), the runtime's peak bytes in use and the
first step's loss (the same for both attention kernels: same weights, same batch).
Fused kernel: cuDNN on NVIDIA GPUs, Pallas splash on TPU; reference: XLA's attention.
Cases are cut off and skipped (a JSON line says so) when `--budget_s` (450 s) runs out, so
the whole run stays under 8 minutes whatever the machine. The smoke run is a CPU check of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name: (preset, model overrides, rows per device, seq_len)
CASES = {
  "gpt2_small": ("gpt2_small", dict(num_vocab_tiles=4), 16, 1024),
  # llama_1b's layers and vocabulary; 4 rows of 2048 per device fit one 80 GB GPU.
  "llama_1b": ("llama_1b", dict(num_vocab_tiles=8), 4, 2048),
}
SMOKE = ("tiny", dict(vocab_size=512, num_layers=2, num_vocab_tiles=2), 2, 128)


def kernels(backend: str, smoke: bool) -> tuple[str, str]:
  """(reference, fused) attention on this backend."""
  if smoke:
    return "einsum", "splash_interpret"
  return "xla", {"tpu": "splash", "gpu": "cudnn"}.get(backend, "xla")


def run_case(name: str, impl: str, steps: int, warmup: int, smoke: bool) -> dict:
  """One case in this process: its JSON record."""
  import dataclasses

  import jax

  from flaxlm import objectives
  from flaxlm.models import gpt
  from flaxlm.nn import attention, sharding
  from flaxlm.pretraining import memory
  from flaxlm.train import optim, reporting
  from flaxlm.train import steps as training

  preset, overrides, rows, seq = SMOKE if smoke else CASES[name]
  config = dataclasses.replace(
    gpt.PRESETS[preset],
    **overrides,
    dtype="float32" if smoke else "bfloat16",
    scan_layers=True,
    remat_policy="minimal",
    attention_impl=impl,
    max_len=max(gpt.PRESETS[preset].max_len, seq),
  )
  mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
  batch_size = rows * mesh.size
  oc = optim.OptimConfig(learning_rate=1e-4, warmup_steps=10, decay_steps=1000)
  model = gpt.GPT(config)
  trainable = training.Trainable(
    model,
    lambda boxed: optim.make_optimizer(oc, boxed),
    optim.schedule(oc),
    mesh,
    sharding.DEFAULT_RULES,
    objectives.causal_lm,
    training.StepConfig(),
    training.token_init(model, mesh.size, 8),
  )
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (batch_size, seq + 1))
  batch = {
    "inputs": tokens[:, :-1].astype(np.int32),
    "targets": tokens[:, 1:].astype(np.int32),
    "weights": np.ones((batch_size, seq), np.float32),
  }
  batch = sharding.to_global(batch, sharding.batch_sharding(mesh))
  with trainable.context():
    compiled = trainable.jitted_train_step.lower(trainable.abstract_state, batch).compile()
  device = mesh.devices.flat[0]
  estimate = memory.MemoryReport.of(compiled, device).peak
  state = trainable.init_state(0)
  first_loss = None
  with trainable.context():  # the ahead-of-time compiled step runs: no second compile
    for _ in range(warmup):
      state, metrics = compiled(state, batch)
      first_loss = float(metrics["loss"]) if first_loss is None else first_loss
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(steps):
      state, metrics = compiled(state, batch)
    last_loss = float(jax.block_until_ready(metrics["loss"]))
  seconds = (time.perf_counter() - t0) / steps
  tps = batch_size * seq / seconds
  peak = reporting.device_peak_flops()
  kernel = attention.resolve(impl, config.compute_dtype)
  flops = gpt.flops_per_token(config, seq)
  flops_maxtext = gpt.flops_per_token(config, seq, causal=True)
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  n_params = sum(x.size for x in jax.tree.leaves(trainable.abstract_state.params))
  return {
    "case": name,
    "attention": kernel,
    "device": device.device_kind,
    "devices": mesh.size,
    "params": n_params,
    "batch": batch_size,
    "seq_len": seq,
    "dtype": config.dtype,
    "steps": steps,
    "step_time_sec": round(seconds, 5),
    "tokens_per_sec": round(tps, 1),
    "mfu": round(tps * flops / peak, 4) if peak else None,
    "mfu_maxtext": round(tps * flops_maxtext / peak, 4)
    if peak and kernel in attention.SKIP_MASKED_BLOCKS
    else None,
    "peak_bytes_in_use": stats.get("peak_bytes_in_use") if stats else None,
    "compiled_peak_bytes_estimate": estimate,
    "first_loss": first_loss,
    "last_loss": last_loss,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--smoke", action="store_true", help="tiny shape on CPU")
  parser.add_argument("--steps", type=int, default=0, help="timed steps (0: 30; smoke 2)")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
  parser.add_argument(
    "--budget_s", type=float, default=450.0, help="seconds for all cases (the run's bound)"
  )
  parser.add_argument("--case", default="", help=argparse.SUPPRESS)  # child: name,impl
  args = parser.parse_args()
  steps = args.steps or (2 if args.smoke else 30)
  if args.case:
    name, impl = args.case.split(",")
    print(json.dumps(run_case(name, impl, steps, args.warmup, args.smoke)), flush=True)
    return
  import jax

  reference, fused = kernels(jax.default_backend(), args.smoke)
  if args.smoke:  # in this process: a CPU check of the script, quick
    for impl in (reference, fused):
      print(json.dumps(run_case("tiny", impl, steps, args.warmup, True)), flush=True)
    return
  deadline = time.perf_counter() + args.budget_s
  for name in CASES:
    for impl in (reference, fused):
      left = deadline - time.perf_counter()
      record = {"case": name, "attention": impl}
      if left < 60:  # no room for a compile and the steps
        print(json.dumps({**record, "skipped": f"{args.budget_s:.0f} s budget spent"}), flush=True)
        continue
      child = [sys.executable, __file__, f"--case={name},{impl}", f"--steps={steps}"]
      try:
        proc = subprocess.run(
          [*child, f"--warmup={args.warmup}"], capture_output=True, text=True, timeout=left
        )
      except subprocess.TimeoutExpired:
        print(json.dumps({**record, "error": f"timed out after {left:.0f} s"}), flush=True)
        continue
      lines = proc.stdout.strip().splitlines()
      if proc.returncode == 0 and lines:
        print(lines[-1], flush=True)
      else:
        print(json.dumps({**record, "error": proc.stderr.strip()[-600:]}), flush=True)


if __name__ == "__main__":
  main()
