"""Greedy decoding of a GPT-2-124M-shaped decoder (prompt 32, 128 new tokens) at batch 1 and
8: flaxlm with float32, bfloat16 and int8 weights (`flaxlm.nn.quantize`) beside Hugging Face
`generate` (transformers + PyTorch CPU, KV cache, float32) on the same weights, in one run.

  python bench/decode.py            # ~8 minutes on 2 CPU cores
  python bench/decode.py --smoke    # a tiny shape: checks the script, measures nothing

Prints one JSON line: the CPU, the read bandwidth measured here (the best of a jitted sum over
496 MB), and for each engine and batch: tokens/s (prefill included, as `generate` does),
the ratio to HF at the same batch, the bytes one decoding step reads (every weight once, the
tied embedding as the LM head, plus the mean KV cache), and the roofline fraction =
steps/s x bytes per step / bandwidth. Decoding one token is a matrix-vector product per weight,
so the weights' bytes bound it: fewer bytes (bf16, int8) is the only way past float32's roof.
The same random weights for all (a transformers GPT2LMHeadModel from a seeded config,
imported by flaxlm.convert): no download.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FULL = dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024)
SMOKE = dict(n_embd=64, n_layer=2, n_head=2, vocab_size=512, n_positions=256)
PROMPT, NEW = 32, 128


def cpu_name() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next(line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line)
  except (OSError, StopIteration):
    return platform.processor() or "unknown"


def read_bandwidth(mb: int = 496) -> float:
  """Bytes/s of the best of 5 jitted sums over an `mb` MB float32 array."""
  import jax
  import jax.numpy as jnp

  x = jnp.ones((mb * 2**20 // 4,), jnp.float32)
  total = jax.jit(jnp.sum)
  total(x).block_until_ready()
  best = min(_seconds(lambda: total(x).block_until_ready()) for _ in range(5))
  return x.nbytes / best


def _seconds(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def timed(fn, reps: int) -> float:
  """The best of `reps` calls after one warm-up call (compilation), in seconds."""
  fn()
  return min(_seconds(fn) for _ in range(reps))


def hf_model(shape: dict, directory: str):
  import torch
  import transformers

  torch.manual_seed(0)
  config = transformers.GPT2Config(**shape, bos_token_id=0, eos_token_id=0)
  model = transformers.GPT2LMHeadModel(config).eval()
  model.save_pretrained(directory)
  return model


def flaxlm_engines(directory: str, batch: int):
  """{name: (model, params)}: the imported GPT-2 in float32, bfloat16 and int8 weights."""
  import jax
  from flax import linen as nn

  from flaxlm.convert import load_hf
  from flaxlm.decode import sampling
  from flaxlm.nn import quantize

  imported = load_hf(directory)
  model, params = imported.model(), jax.tree.map(jax.numpy.asarray, imported.params)
  qmodel = quantize.quantized_model(model, params, "int8")
  tokens = jax.numpy.zeros((batch, 8), jax.numpy.int32)
  abstract = jax.eval_shape(lambda: nn.meta.unbox(qmodel.init(jax.random.PRNGKey(0), tokens)))
  qparams = quantize.quantize(params, abstract["params"])
  return {
    "flaxlm_f32": (model, params),
    "flaxlm_bf16": sampling.to_bf16(model, params),
    "flaxlm_int8": (qmodel, qparams),
  }


def step_bytes(params, model_config, batch: int, cache_bytes: int) -> int:
  """Bytes one decoding step reads: every parameter once (position embeddings: one row a
  sequence) and the KV cache at its mean length."""
  from flaxlm.nn import quantize

  total = quantize.weight_bytes(params)
  positions = model_config.max_len * model_config.embed_dim * cache_bytes
  mean_len = PROMPT + NEW / 2
  kv = 2 * model_config.num_layers * batch * mean_len * model_config.embed_dim * cache_bytes
  return int(total - positions + kv)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--smoke", action="store_true")
  parser.add_argument("--reps", type=int, default=2)
  args = parser.parse_args()
  shape = SMOKE if args.smoke else FULL
  new = 8 if args.smoke else NEW

  import jax
  import torch

  from flaxlm.decode import sampling

  out = {"cpu": cpu_name(), "shape": shape, "prompt": PROMPT, "new_tokens": new}
  out["read_gb_s"] = round(read_bandwidth(16 if args.smoke else 496) / 1e9, 1)
  with tempfile.TemporaryDirectory() as directory:
    hf = hf_model(shape, directory)
    results = {}
    for batch in (1, 8):
      rng = np.random.default_rng(batch)
      prompt = rng.integers(1, shape["vocab_size"], (batch, PROMPT)).astype(np.int32)
      ids = torch.tensor(prompt, dtype=torch.long)

      def run_hf(ids=ids):
        with torch.no_grad():
          hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                      min_new_tokens=new, do_sample=False, pad_token_id=0)  # fmt: skip

      row = {"hf_f32": batch * new / timed(run_hf, args.reps)}
      engines = flaxlm_engines(directory, batch)
      config = sampling.SamplingConfig(max_new_tokens=new, temperature=0.0)
      bytes_per_step = {"hf_f32": None}
      for name, (model, params) in engines.items():
        run = lambda model=model, params=params, prompt=prompt, config=config: (
          jax.block_until_ready(
            sampling.generate(model, params, prompt, jax.random.PRNGKey(0), config)
          )
        )
        row[name] = batch * new / timed(run, args.reps)
        cache = 2 if name == "flaxlm_bf16" else 4
        bytes_per_step[name] = step_bytes(params, model.config, batch, cache)
      bytes_per_step["hf_f32"] = bytes_per_step["flaxlm_f32"]
      bandwidth = out["read_gb_s"] * 1e9
      results[f"batch_{batch}"] = {
        name: {
          "tokens_per_s": round(tps, 1),
          "vs_hf": round(tps / row["hf_f32"], 2),
          "mb_per_step": round(bytes_per_step[name] / 1e6, 1),
          "roofline_fraction": round(tps / batch * bytes_per_step[name] / bandwidth, 2),
        }
        for name, tps in row.items()
      }
      del engines
  out.update(results)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
