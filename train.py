"""Pretrain a language model.

  python train.py --config=configs/gpt_tiny.py --workdir=/tmp/gpt_tiny [--config.key=value ...]

Rerunning the same command in the same workdir resumes from its newest checkpoint.
--dry_run compiles the train step for the configured mesh without reading data and prints
its per-device peak memory (flaxlm/pretraining/memory.py); CPU meshes are emulated with
XLA_FLAGS=--xla_force_host_platform_device_count=8.
Multi-process (e.g. two processes on one machine):
  python train.py ... --coordinator_address=127.0.0.1:12355 --num_processes=2 --process_id=0
"""

import sys

import jax
from absl import flags

from flaxlm import cli
from flaxlm.config import dump_config_json, from_config_dict
from flaxlm.pretraining import memory
from flaxlm.pretraining import run as pretraining

_CONFIG = cli.define_config_flag("configs/gpt_tiny.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and the tokenizer go.")
_DRY_RUN = flags.DEFINE_bool(
  "dry_run", False, "compile the train step for the mesh, print per-device memory, read no data."
)
cli.define_distributed_flags()


def main(argv):
  workdir = cli.start(argv, _WORKDIR, "train.py")
  config, run = cli.read_config(_CONFIG, from_config_dict, "train.py")
  cli.init_distributed()
  if _DRY_RUN.value:
    with cli.user_errors("train.py --dry_run"):
      print(memory.dry_run(run)[0])
    return
  with cli.user_errors("train.py"):
    result = pretraining.train(run, workdir, dump_config_json(config))
  if jax.process_index() == 0:
    shown = [f"{k} {result[k]:.4f}" for k in ("loss", "eval_loss", "eval_accuracy") if k in result]
    stopped = " (interrupted; rerun the same command to resume)" if result["interrupted"] else ""
    print(f"final step {result['step']}: {', '.join(shown)}{stopped}")
  if result["interrupted"]:
    return
  try:  # every process takes part in the (sharded) decoding
    report = pretraining.end_of_run_report(run, result)
  except ValueError as e:  # e.g. prompt + sample_tokens past max_len; the run is saved
    sys.exit(f"train.py: training finished and was saved, but the report failed: {e}")
  if report and jax.process_index() == 0:
    print(report)


if __name__ == "__main__":
  main(sys.argv)
