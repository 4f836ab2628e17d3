"""Training throughput of one GPT architecture in flaxlm (JAX) and in PyTorch eager, on CPU.

What is measured: tokens per second of full training steps (forward + backward + global-norm
clip at 1.0 + AdamW update, f32, dropout 0) on a fresh random batch each step, for the same
GPT-2 style model (learned positions, pre-LayerNorm, GELU-tanh, tied embeddings, biases) in
flaxlm (`training.Trainable.train_step`) and in `bench/torch_gpt.py` (eager,
`F.scaled_dot_product_attention`, foreach AdamW). Both sides use the same cores and
threads. After a warm-up (compilation included) that is not timed, timing blocks of
`--steps` steps alternate flaxlm, torch, flaxlm, torch ... for `--rounds` rounds, so that
machine noise hits both alike; each side reports its median block. Also reported: flaxlm's
model FLOP/s (`gpt.flops_per_token`) against the CPU's f32 matmul peak, measured with a
jitted loop of 2048 x 2048 matmuls, and the same loop's rate in PyTorch (the ceiling each
side's step works against).

flaxlm runs each shape as its config would (see SHAPES): on the tiny shape that means one
XLA device per core, data-parallel, instead of one device whose ops are split over threads.

Prints one JSON line. Usage:
  python bench/train_throughput.py --shape=tiny|gpt2_small [--steps N] [--rounds R]
      [--cpu_devices N] [--attention_impl xla|einsum]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

CORES = len(os.sched_getaffinity(0))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch_gpt  # noqa: E402

from flaxlm import cli, objectives  # noqa: E402
from flaxlm.models import gpt  # noqa: E402
from flaxlm.nn import attention, sharding  # noqa: E402
from flaxlm.train import optim  # noqa: E402
from flaxlm.train import steps as training  # noqa: E402

# name: (model dims, batch, seq, default steps per block, default rounds, cpu_devices)
# flaxlm runs each shape as its config does: the tiny shape as configs/shakespeare_char.py
# (one XLA device per core), gpt2_small as configs/gpt2_small.py (one device).
SHAPES = {
  # nanoGPT's shakespeare_char CPU recipe.
  "tiny": (
    dict(vocab_size=65, num_layers=4, num_heads=4, embed_dim=128, mlp_dim=512),
    12,
    64,
    50,
    5,
    -1,
  ),
  # GPT-2 small, vocab padded to 50304.
  "gpt2_small": (
    dict(vocab_size=50304, num_layers=12, num_heads=12, embed_dim=768, mlp_dim=3072),
    4,
    256,
    3,
    3,
    1,
  ),
}


def matmul_peak(n: int = 2048, reps: int = 8, trials: int = 3) -> float:
  """f32 FLOP/s of a jitted loop of n x n matmuls (best of `trials`)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32) / n**0.5
  loop = jax.jit(lambda x: jax.lax.fori_loop(0, reps, lambda _, y: a @ y, x))
  jax.block_until_ready(loop(a))
  best = float("inf")
  for _ in range(trials):
    t0 = time.perf_counter()
    jax.block_until_ready(loop(a))
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 * reps / best


def torch_matmul_peak(n: int = 2048, reps: int = 8, trials: int = 3) -> float:
  """The same measurement in PyTorch: f32 FLOP/s of `reps` n x n matmuls (best of `trials`)."""
  a = torch.randn(n, n) / n**0.5
  y = a @ a  # warm-up
  best = float("inf")
  for _ in range(trials):
    t0 = time.perf_counter()
    for _ in range(reps):
      y = a @ y
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 * reps / best


class FlaxlmSide:
  """flaxlm's jitted, state-donating train step on a fresh random batch per step."""

  def __init__(self, dims: dict, batch: int, seq: int):
    self.config = gpt.GPTConfig(max_len=seq, **dims)
    oc = optim.OptimConfig(learning_rate=1e-3, warmup_steps=100, decay_steps=2000)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    self.trainable = training.Trainable(
      gpt.GPT(self.config),
      lambda boxed: optim.make_optimizer(oc, boxed),
      optim.schedule(oc),
      mesh,
      sharding.DEFAULT_RULES,
      objectives.causal_lm,
      training.StepConfig(),
      training.token_init(gpt.GPT(self.config), batch, seq),
    )
    self.state = self.trainable.init_state(0)
    self.batch_sharding = sharding.batch_sharding(mesh)
    self.shape, self.vocab = (batch, seq), dims["vocab_size"]
    self.rng = np.random.default_rng(0)

  def run(self, steps: int) -> float:
    metrics = None
    for _ in range(steps):
      tokens = self.rng.integers(0, self.vocab, (self.shape[0], self.shape[1] + 1), dtype=np.int32)
      batch = {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "weights": np.ones(self.shape, np.float32),
      }
      batch = sharding.to_global(batch, self.batch_sharding)
      self.state, metrics = self.trainable.train_step(self.state, batch)
    return float(jax.block_until_ready(metrics["loss"]))


class TorchSide:
  """The same model and step in PyTorch eager."""

  def __init__(self, dims: dict, batch: int, seq: int):
    torch.manual_seed(0)
    dims = {k: v for k, v in dims.items() if k != "attention_impl"}  # always SDPA
    self.model = torch_gpt.GPT(torch_gpt.Config(max_len=seq, **dims))
    self.optimizer = torch_gpt.make_optimizer(self.model)
    self.shape, self.vocab = (batch, seq), dims["vocab_size"]

  def run(self, steps: int) -> float:
    loss = None
    for _ in range(steps):
      tokens = torch.randint(0, self.vocab, (self.shape[0], self.shape[1] + 1))
      loss = torch_gpt.train_step(self.model, self.optimizer, tokens[:, :-1], tokens[:, 1:])
    return float(loss)


def timed(side, steps: int) -> float:
  t0 = time.perf_counter()
  side.run(steps)
  return time.perf_counter() - t0


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
  parser.add_argument(
    "--steps", type=int, default=0, help="steps per timing block (0: shape default)"
  )
  parser.add_argument("--rounds", type=int, default=0, help="alternating rounds (0: shape default)")
  parser.add_argument(
    "--warmup", type=int, default=2, help="untimed steps per side after compiling"
  )
  parser.add_argument(
    "--cpu_devices",
    type=int,
    default=0,
    help="XLA devices flaxlm splits the CPU into, data-parallel (0: the shape's config; -1: one per core)",
  )
  parser.add_argument(
    "--attention_impl", default="", help="flaxlm attention: xla | einsum ('': auto, einsum on CPU)"
  )
  args = parser.parse_args()
  dims, batch, seq, steps, rounds, cpu_devices = SHAPES[args.shape]
  steps, rounds = args.steps or steps, args.rounds or rounds
  devices = cli.use_cpu_devices(args.cpu_devices or cpu_devices, (batch,))
  if args.attention_impl:
    dims = dict(dims, attention_impl=args.attention_impl)
  torch.set_num_threads(CORES)

  peak, torch_peak = matmul_peak(), torch_matmul_peak()
  sides = {"flaxlm": FlaxlmSide(dims, batch, seq), "torch": TorchSide(dims, batch, seq)}
  for side in sides.values():
    side.run(args.warmup)  # flaxlm compiles here
  times = {name: [] for name in sides}
  for _ in range(rounds):
    for name, side in sides.items():
      times[name].append(timed(side, steps))

  tokens = steps * batch * seq
  tps = {name: tokens / statistics.median(t) for name, t in times.items()}
  flops = tps["flaxlm"] * gpt.flops_per_token(sides["flaxlm"].config, seq)
  print(
    json.dumps(
      {
        "shape": args.shape,
        "batch": batch,
        "seq_len": seq,
        "steps_per_block": steps,
        "rounds": rounds,
        "threads": CORES,
        "flaxlm_cpu_devices": devices,
        "flaxlm_attention": attention.resolve(sides["flaxlm"].config.attention_impl),
        "flaxlm_tokens_per_sec": round(tps["flaxlm"], 1),
        "torch_tokens_per_sec": round(tps["torch"], 1),
        "ratio": round(tps["flaxlm"] / tps["torch"], 3),
        "flaxlm_flops_per_sec": round(flops),
        "torch_flops_per_sec": round(
          tps["torch"] * gpt.flops_per_token(sides["flaxlm"].config, seq)
        ),
        "matmul_peak_flops_per_sec": round(peak),
        "torch_matmul_peak_flops_per_sec": round(torch_peak),
        "flaxlm_fraction_of_peak": round(flops / peak, 3),
        "flaxlm_block_seconds": [round(t, 3) for t in times["flaxlm"]],
        "torch_block_seconds": [round(t, 3) for t in times["torch"]],
        "jax": jax.__version__,
        "torch": torch.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
      }
    )
  )


if __name__ == "__main__":
  main()
