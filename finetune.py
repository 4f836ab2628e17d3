"""Fine-tune a model on a task, then evaluate it or predict with it.

  python finetune.py --config=configs/finetune_sst2_lstm.py --workdir=/tmp/sst2_lstm
  python finetune.py --workdir=/tmp/sst2_lstm --mode=evaluate --eval_data=tsv:dev.tsv
  python finetune.py --workdir=/tmp/sst2_lstm --mode=predict --eval_data=tsv:dev.tsv \
      --output=/tmp/predictions.jsonl

  python finetune.py --config=configs/finetune_sst2_minilm_qlora.py --workdir=/tmp/q --dry_run

Training resumes like train.py and ends by evaluating the best checkpoint on the dev set.
`evaluate` and `predict` read the task, tokenizer, labels and column mapping from the
workdir's best checkpoint; `--config.columns.<name>=<field>` remaps columns for another file
and generation tasks decode as trained unless --beam_size / --alpha / --max_new_tokens /
--no_repeat_ngram say.
--dry_run compiles the train step and prints what one device holds; it writes nothing.
Both print one JSON line of metrics (or a count) as their last line.
"""

import json
import re
import sys

import jax
from absl import flags

from flaxlm import cli
from flaxlm.config import dump_config_json
from flaxlm.config.finetuning import from_config_dict
from flaxlm.finetuning import kfold as cross_validation
from flaxlm.finetuning import load as finetuned
from flaxlm.finetuning import memory as finetune_memory
from flaxlm.finetuning import run as finetuning

_CONFIG = cli.define_config_flag("configs/finetune_sst2_lstm.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and reports go.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict"], "what to do.")
_EVAL_DATA = flags.DEFINE_string(
  "eval_data", "", "evaluate/predict: a record spec, e.g. tsv:dev.tsv"
)
_OUTPUT = flags.DEFINE_string("output", "", "predict: the JSONL file to write.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "evaluate/predict: examples per batch.")
_BEAM_SIZE = flags.DEFINE_integer("beam_size", None, "evaluate/predict: beams (0: greedy).")
_ALPHA = flags.DEFINE_float("alpha", None, "evaluate/predict: beam length penalty.")
_NEW = flags.DEFINE_integer("max_new_tokens", None, "evaluate/predict: tokens generated at most.")
_NO_REPEAT = flags.DEFINE_integer(
  "no_repeat_ngram", None, "evaluate/predict, greedy: no n-gram of this size twice in an output."
)
_QUANTIZE = flags.DEFINE_enum(
  "quantize", "", ["", "int8", "int4"],
  "evaluate/predict: weight-only quantized projections (evaluate prints the float figures beside).",
)  # fmt: skip
_DRY_RUN = flags.DEFINE_bool(
  "dry_run", False,
  "train: compile the train step on the run's longest example, print per-device memory "
  "(frozen and trained parameters, optimizer state, temporaries, peak); trains nothing.",
)  # fmt: skip
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


def decoding_overrides() -> dict:
  """The task fields that the decoding flags change (evaluate / predict); unset ones stay."""
  given = {
    "beam_size": _BEAM_SIZE.value, "alpha": _ALPHA.value, "max_new_tokens": _NEW.value,
    "no_repeat_ngram": _NO_REPEAT.value,
  }  # fmt: skip
  return {k: v for k, v in given.items() if v is not None}


def quantized_summary(out: dict) -> str:
  """One line: each metric of the quantized model beside the float model's, and the sizes."""
  mode, floats, sizes = out["quantize"], out["float"], out["param_bytes"]
  shown = [
    f"{k} {out[k]:.4f} (float {floats[k]:.4f}, {out[k] - floats[k]:+.4f})"
    for k in sorted(floats)
    if k.startswith("eval_") and isinstance(floats[k], float) and k in out
  ]
  mb = {k: v / 2**20 for k, v in sizes.items()}
  return (
    f"{mode} weights: "
    + "; ".join(shown)
    + (f"; parameters {mb[mode]:.1f} MiB (float {mb['float']:.1f} MiB)")
  )


def _cross_validate(ft, workdir: str, config_json: dict) -> None:
  summary = cross_validation.cross_validate(ft, workdir, config_json)
  if jax.process_index() != 0 or summary.get("interrupted"):
    return
  for key, m in summary.items():
    if key == ft.early_stopping.metric:  # the task's own metric, or the one asked for
      print(f"{ft.kfold}-fold {key}: {m['mean']:.4f} +- {m['std']:.4f} (folds: {m['folds']})")
  print(json.dumps(summary))


def main(argv):
  workdir = cli.start(argv, _WORKDIR, "finetune.py")
  if _MODE.value == "train":
    config, ft = cli.read_config(_CONFIG, from_config_dict, "finetune.py")
    cli.init_distributed()
    if _DRY_RUN.value:
      with cli.user_errors("finetune.py --dry_run"):
        text, figures = finetune_memory.dry_run(ft)
      if jax.process_index() == 0:
        print(text)
        print(json.dumps(figures))
      return
    with cli.user_errors("finetune.py"):
      if ft.kfold:
        return _cross_validate(ft, workdir, dump_config_json(config))
      result = finetuning.train(ft, workdir, dump_config_json(config))
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
  columns, task = column_overrides(argv), decoding_overrides()
  with cli.user_errors("finetune.py"):
    if _MODE.value == "evaluate":
      out = finetuned.evaluate(
        workdir, _EVAL_DATA.value, columns, _BATCH.value, task, _QUANTIZE.value
      )
      if _QUANTIZE.value and jax.process_index() == 0:
        print(quantized_summary(out))
    else:
      if not _OUTPUT.value:
        sys.exit("finetune.py: --mode=predict needs --output=<file.jsonl>")
      count = finetuned.predict(
        workdir, _EVAL_DATA.value, _OUTPUT.value, columns, _BATCH.value, task, _QUANTIZE.value
      )
      out = {"num_examples": count, "output": _OUTPUT.value}
  if jax.process_index() == 0:
    print(json.dumps(out))


if __name__ == "__main__":
  main(sys.argv)
