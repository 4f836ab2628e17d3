"""Pretrain a language model.

  python train.py --config=configs/gpt_tiny.py --workdir=/tmp/gpt_tiny [--config.key=value ...]

Rerunning the same command in the same workdir resumes from its newest checkpoint.
Multi-process (e.g. two processes on one machine):
  python train.py ... --coordinator_address=127.0.0.1:12355 --num_processes=2 --process_id=0
"""

import sys

import jax
from absl import flags

from flaxlm import cli, seq2seq_decoding
from flaxlm.checkpoint import CheckpointMismatchError
from flaxlm.config import from_config_dict
from flaxlm.sampling import SamplingConfig, sample_text
from flaxlm.trainer import TrainingDivergedError, dump_config_json, train

_CONFIG = cli.define_config_flag("configs/gpt_tiny.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and the tokenizer go.")
cli.define_distributed_flags()


def main(argv):
  cli.parse_flags(argv)
  cli.setup_logging()
  if not _WORKDIR.value:
    sys.exit("train.py: --workdir is required (checkpoints, metrics and the tokenizer go there)")
  config = cli.config_value(_CONFIG)
  try:
    run = from_config_dict(config)
    cli.use_cpu_devices(
      run.cpu_devices, (run.batch_size // run.step.accum_steps, run.eval_batch_size)
    )
  except (KeyError, ValueError) as e:
    sys.exit(f"train.py: bad config: {e}")
  cli.init_distributed()
  try:
    result = train(run, _WORKDIR.value, dump_config_json(config))
  except (FileNotFoundError, CheckpointMismatchError, TrainingDivergedError) as e:
    sys.exit(f"train.py: {e}")  # the message says what to do; a traceback would bury it
  if jax.process_index() == 0:
    shown = [f"{k} {result[k]:.4f}" for k in ("loss", "eval_loss", "eval_accuracy") if k in result]
    stopped = " (interrupted; rerun the same command to resume)" if result["interrupted"] else ""
    print(f"final step {result['step']}: {', '.join(shown)}{stopped}")
  if run.objective in ("span_corruption", "seq2seq") and not result["interrupted"]:
    report = seq2seq_decoding.example_report(
      result["trainable"], result["state"].params, result["tokenizer"], result["eval_example"]
    )
    if jax.process_index() == 0:
      print("--- held-out example ---\n" + report + "\n------------------------")
  # Every process takes part in the (sharded) sampling computation.
  if run.sample_tokens and run.objective == "causal_lm" and not result["interrupted"]:
    try:
      text = sample_text(
        result["trainable"],
        result["state"].params,
        result["tokenizer"],
        run.sample_prompt,
        SamplingConfig(run.sample_tokens, temperature=0.8, top_k=40),
        seed=run.seed,
      )
    except ValueError as e:  # e.g. prompt + sample_tokens past max_len; the run is saved
      sys.exit(f"train.py: training finished and was saved, but sampling failed: {e}")
    if jax.process_index() == 0:
      print("--- sample ---\n" + text + "\n--------------")


if __name__ == "__main__":
  main(sys.argv)
