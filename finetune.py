"""Fine-tune a model on a task, then evaluate it or predict with it.

  python finetune.py --config=configs/finetune_sst2_lstm.py --workdir=/tmp/sst2_lstm
  python finetune.py --workdir=/tmp/sst2_lstm --mode=evaluate --eval_data=tsv:dev.tsv
  python finetune.py --workdir=/tmp/sst2_lstm --mode=predict --eval_data=tsv:dev.tsv \
      --output=/tmp/predictions.jsonl

Training resumes like train.py and ends by evaluating the best checkpoint on the dev set.
`evaluate` and `predict` read the task, tokenizer, labels and column mapping from the
workdir's best checkpoint; `--config.columns.<name>=<field>` remaps columns for another file.
Both print one JSON line of metrics (or a count) as their last line.
"""

import json
import re
import sys

import jax
from absl import flags

from flaxlm import cli, finetuned, finetuning
from flaxlm.config_finetune import from_config_dict
from flaxlm.pretraining import dump_config_json

_CONFIG = cli.define_config_flag("configs/finetune_sst2_lstm.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and reports go.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict"], "what to do.")
_EVAL_DATA = flags.DEFINE_string(
  "eval_data", "", "evaluate/predict: a record spec, e.g. tsv:dev.tsv"
)
_OUTPUT = flags.DEFINE_string("output", "", "predict: the JSONL file to write.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "evaluate/predict: examples per batch.")
cli.define_distributed_flags()


def column_overrides(argv: list[str]) -> dict:
  """The --config.columns.<name>=<value> given on the command line (evaluate / predict)."""
  found = {}
  for arg in argv:
    m = re.fullmatch(r"--config\.columns\.(\w+)=(.*)", arg)
    if m:
      name, value = m.groups()
      found[name] = int(value) if name.endswith("_index") else value
  return found


def main(argv):
  cli.parse_flags(argv)
  cli.setup_logging()
  if not _WORKDIR.value:
    sys.exit("finetune.py: --workdir is required (checkpoints, metrics and reports go there)")
  if _MODE.value == "train":
    config = cli.config_value(_CONFIG)
    with cli.user_errors("finetune.py: bad config"):
      ft = from_config_dict(config)
      cli.use_cpu_devices(
        ft.cpu_devices, (ft.batch_size // ft.step.accum_steps, ft.eval_batch_size)
      )
    cli.init_distributed()
    with cli.user_errors("finetune.py"):
      result = finetuning.train(
        ft, _WORKDIR.value, dump_config_json(config), config.init_from_command
      )
    if result["interrupted"]:
      print(f"stopped at step {result['step']} (interrupted; rerun the same command to resume)")
      return
    metrics = {k: v for k, v in result.items() if k.startswith("eval_") or k == "best"}
    if jax.process_index() == 0:
      print(json.dumps(metrics))
    return
  if not _EVAL_DATA.value:
    sys.exit(f"finetune.py: --mode={_MODE.value} needs --eval_data=<spec> (e.g. tsv:dev.tsv)")
  cli.init_distributed()
  columns = column_overrides(argv)
  with cli.user_errors("finetune.py"):
    if _MODE.value == "evaluate":
      out = finetuned.evaluate(_WORKDIR.value, _EVAL_DATA.value, columns, _BATCH.value)
    else:
      if not _OUTPUT.value:
        sys.exit("finetune.py: --mode=predict needs --output=<file.jsonl>")
      count = finetuned.predict(
        _WORKDIR.value, _EVAL_DATA.value, _OUTPUT.value, columns, _BATCH.value
      )
      out = {"num_examples": count, "output": _OUTPUT.value}
  if jax.process_index() == 0:
    print(json.dumps(out))


if __name__ == "__main__":
  main(sys.argv)
