"""Hyperparameter search over a fine-tuning or pretraining config (Optuna).

  python -m flaxlm.search --config=configs/search_sst2_lstm.py \
      --space=configs/search_sst2_lstm.json --trials=20 --study_dir=/tmp/search_sst2

--config is any finetune.py or train.py config (with --config.<key>=<value> overrides); the
space file (flaxlm/search/space.py) names the keys searched and their ranges. Samplers: tpe
(default), random; pruners: median (default), hyperband, none, fed by each run's own
evaluations (the study's metric: the config's early-stopping metric, or eval_loss). Each
trial trains in <study_dir>/trial_<n>; the study is <study_dir>/study.db (SQLite).
Rerun the same command to resume a stopped or killed search; start the same command in
several shells to run trials in parallel. At the end: trials.csv / trials.json (every
trial), best_trial.json (its values, workdir and the command that retrains it),
best_config.json and the plots, and one JSON line on stdout.
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import flags
from ml_collections import config_flags

from flaxlm import cli

_CONFIG = cli.define_config_flag("configs/search_sst2_lstm.py", "the config searched.")
_SPACE = flags.DEFINE_string("space", None, "the search space (JSON; flaxlm/search/space.py).")
_TRIALS = flags.DEFINE_integer("trials", 20, "finished trials the study should hold.")
_STUDY_DIR = flags.DEFINE_string("study_dir", None, "the study and its trials' workdirs.")
_SAMPLER = flags.DEFINE_enum("sampler", "tpe", ["tpe", "random"], "how values are chosen.")
_PRUNER = flags.DEFINE_enum("pruner", "median", ["median", "hyperband", "none"],
                            "how unpromising trials are stopped.")  # fmt: skip
_SEED = flags.DEFINE_integer("seed", 0, "the sampler's seed.")
_STARTUP = flags.DEFINE_integer(
  "startup_trials", 5, "trials sampled at random, and run unpruned, before TPE and the median "
  "pruner use the results."
)  # fmt: skip
_PRUNE_AFTER = flags.DEFINE_integer("prune_after", 0, "no pruning before this step.")
_METRIC = flags.DEFINE_string("metric", "", "the objective ('' = the early-stopping metric).")
_DIRECTION = flags.DEFINE_enum("direction", "", ["", "maximize", "minimize"],
                               "'' = from the early-stopping mode.")  # fmt: skip
_HEARTBEAT = flags.DEFINE_integer("heartbeat", 30, "seconds between a trial's heartbeats.")
_GRACE = flags.DEFINE_integer(
  "grace_period", 120, "seconds without a heartbeat after which a trial counts as killed."
)


def main(argv):
  cli.parse_flags(argv)
  cli.setup_logging()
  from flaxlm.search import report, space, study

  if not _SPACE.value or not _STUDY_DIR.value:
    sys.exit("flaxlm.search: --space=<file> and --study_dir=<dir> are required")
  with cli.user_errors("flaxlm.search"):
    config = cli.config_value(_CONFIG)
    dimensions = space.read(_SPACE.value)
    space.check_against(dimensions, config)
    c = study.SearchConfig(
      _TRIALS.value, _STUDY_DIR.value, _SAMPLER.value, _PRUNER.value, _SEED.value,
      _STARTUP.value, _PRUNE_AFTER.value, _METRIC.value, _DIRECTION.value, _HEARTBEAT.value,
      _GRACE.value,
    )  # fmt: skip
    study.check(c)
    job, entry_point, metric, direction = study.Job.of(config, dimensions)
    metric, direction = c.metric or metric, c.direction or direction
    try:
      s = study.search(job, c, metric, direction)
    except study.Stopped as e:
      print(f"flaxlm.search: stopped ({e}); rerun the same command to resume", file=sys.stderr)
      sys.exit(1)
    config_path = config_flags.get_config_filename(flags.FLAGS["config"])
    summary = report.write(s, pathlib.Path(c.study_dir), job, entry_point, config_path)
  best = summary["best"]
  if best:
    print(f"best trial {best['number']}: {metric} {best['value']:.4f} with {best['params']}",
          file=sys.stderr)  # fmt: skip
  print(json.dumps(summary))


if __name__ == "__main__":
  main(sys.argv)
