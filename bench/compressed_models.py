"""Size, speed and dev accuracy of fine-tuned workdirs side by side: a teacher and the models
made smaller from it (distilled students, pruned models), measured in one process.

For each workdir: parameters (all, and the nonzero ones), the float32 bytes of its weights, the
size of its safetensors export (`python -m flaxlm.convert export`; pruned zeros are stored, so
a pruned export is the dense size), dev accuracy (`flaxlm.evaluate` on the given records), and
prediction examples/s: the whole dev set predicted in batches of `--batch_size` (flaxlm's
`predict` path: tokenized once, untimed; a warm-up pass compiles), in `--rounds` rounds that
visit the workdirs in turn, so the machine's drift hits every model alike. Pruned weights are
multiplied like any others here (dense kernels on CPU): pruning buys speed only where a kernel
skips zeros (2:4 on sparse tensor cores), which this bench does not measure.

Prints one JSON line. Usage:
  python bench/compressed_models.py --eval_data=tsv:../shared/data/sst2/dev.tsv \\
      /tmp/sst2_minilm /tmp/sst2_distill /tmp/sst2_student /tmp/sst2_prune50 ...
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def cpu_name() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--eval_data", required=True)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args(argv)

  import jax
  import numpy as np
  from flax import traverse_util

  import flaxlm
  from flaxlm.convert.__main__ import main as convert_main
  from flaxlm.data import formats
  from flaxlm.finetuning import evaluation
  from flaxlm.finetuning import load as finetuned

  models, rows = {}, {}
  for workdir in args.workdirs:
    model = flaxlm.load(workdir)
    c = model.task.columns
    records = formats.read(args.eval_data, c.word_index, c.tag_index, "eval_data")
    flat = traverse_util.flatten_dict(jax.device_get(model.params))
    with tempfile.TemporaryDirectory() as out:
      convert_main(["export", workdir, out])
      exported = sum(p.stat().st_size for p in pathlib.Path(out).glob("*.safetensors"))
    metrics = flaxlm.evaluate(model, records, args.batch_size)
    data = finetuned.records_set(model, records, args.batch_size)  # tokenized: untimed
    evaluation.predictions(model.task, model.trainable, model.params, data)  # compiles
    models[workdir] = (model, data)
    rows[workdir] = {
      "parameters": int(sum(v.size for v in flat.values())),
      "nonzero": int(sum(np.count_nonzero(v) for v in flat.values())),
      "weight_bytes": int(sum(v.size * 4 for v in flat.values())),
      "export_bytes": exported,
      "eval_accuracy": float(metrics.get("eval_accuracy", float("nan"))),
      "seconds": 0.0,
      "examples": 0,
    }
  for _ in range(args.rounds):
    for workdir, (model, data) in models.items():
      start = time.perf_counter()
      evaluation.predictions(model.task, model.trainable, model.params, data)
      rows[workdir]["seconds"] += time.perf_counter() - start
      rows[workdir]["examples"] += len(data.records)
  for row in rows.values():
    row["examples_per_s"] = round(row["examples"] / row["seconds"], 1)
  out = {"cpu": cpu_name(), "devices": jax.device_count(), "batch_size": args.batch_size,
         "rounds": args.rounds, "models": rows}  # fmt: skip
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
