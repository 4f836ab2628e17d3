"""A hyperparameter search over any fine-tuning or pretraining config, with Optuna.

Each trial is a run of the config with the space's values set, in a workdir of its own
(`<study_dir>/trial_<n>`), trained in this process by the library (`finetuning.train` or
`pretraining.train`). After every evaluation the run reports the study's metric to its trial
(`trial.report`) and asks the pruner (median or Hyperband) whether to go on: a pruned trial
stops at once, saved, and says so. The objective is the run's final metric: a fine-tuning
run's best checkpoint evaluated on the dev set, a pretraining run's last evaluation.

The study lives in SQLite (`<study_dir>/study.db`), so a search resumes where it was:
`--trials` counts finished trials (complete or pruned) in the study, not in this process. A
run stopped by SIGINT / SIGTERM is saved and its trial queued again with the same values
and workdir; a process killed outright leaves a trial whose heartbeat stops, which the next
process to start a trial marks failed and queues again the same way (after `grace_period`
seconds). Either way the queued trial resumes its workdir's checkpoint. Several processes
started on one study run trials in parallel (SQLite takes their writes one at a time).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import pathlib
import warnings

from flaxlm.errors import ConfigError
from flaxlm.search import space as spaces

log = logging.getLogger("flaxlm")

SAMPLERS = ("tpe", "random")
# Config keys that change what a fine-tuning run reads: when the space leaves them alone, the
# records are read once for all trials.
DATA_KEYS = ("train_data", "eval_data", "val_fraction", "seed", "columns", "max_train_examples")
PRUNERS = ("median", "hyperband", "none")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  trials: int  # finished (complete or pruned) trials the study should hold
  study_dir: str
  sampler: str = "tpe"
  pruner: str = "median"
  seed: int = 0
  startup_trials: int = 5  # sampled at random before TPE models the results, and before
  # the median pruner compares (Optuna's defaults are 10 and 5)
  prune_after: int = 0  # no pruning before this step (the first evaluations are noisy)
  metric: str = ""  # '' = the config's early-stopping metric, else eval_loss
  direction: str = ""  # maximize | minimize; '' = from the config's early-stopping mode
  heartbeat: int = 30  # seconds between a running trial's heartbeats
  grace_period: int = 120  # silence after which a trial counts as killed


class Stopped(Exception):
  """The search was asked to stop (SIGINT / SIGTERM during a trial; the trial is saved)."""


def check(c: SearchConfig) -> None:
  if c.trials < 1:
    raise ConfigError(f"--trials={c.trials}: at least 1")
  if c.sampler not in SAMPLERS or c.pruner not in PRUNERS:
    raise ConfigError(f"--sampler must be one of {SAMPLERS} and --pruner one of {PRUNERS}")
  if c.direction not in ("", "maximize", "minimize"):
    raise ConfigError(f"--direction={c.direction!r}: maximize or minimize")
  if c.heartbeat < 1 or c.grace_period <= c.heartbeat:
    raise ConfigError("--heartbeat must be >= 1 s and --grace_period longer than it")


def _optuna():
  try:
    import optuna
  except ImportError:
    raise ConfigError("flaxlm.search runs Optuna: pip install 'flaxlm[search]'") from None
  return optuna


def open_study(c: SearchConfig, metric: str, direction: str):
  """The study of `c.study_dir` (created, or loaded as it was left)."""
  optuna = _optuna()
  folder = pathlib.Path(c.study_dir)
  folder.mkdir(parents=True, exist_ok=True)

  def requeue(study, trial):  # a trial whose process died: run it again, resuming its workdir
    log.warning("trial %d stopped beating (its process was killed): queued again", trial.number)
    study.enqueue_trial(trial.params, user_attrs={"workdir": trial.user_attrs.get("workdir", "")})

  warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat
  storage = optuna.storages.RDBStorage(
    f"sqlite:///{(folder / 'study.db').resolve()}",
    engine_kwargs={"connect_args": {"timeout": 60}},  # parallel processes wait for the lock
    heartbeat_interval=c.heartbeat,
    grace_period=c.grace_period,
    heartbeat_stale_trial_callback=requeue,
  )
  if c.sampler == "tpe":
    sampler = optuna.samplers.TPESampler(seed=c.seed, n_startup_trials=c.startup_trials)
  else:
    sampler = optuna.samplers.RandomSampler(seed=c.seed)
  pruner = {
    "median": lambda: optuna.pruners.MedianPruner(c.startup_trials, c.prune_after),
    "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=max(c.prune_after, 1)),
    "none": optuna.pruners.NopPruner,
  }[c.pruner]()
  study = optuna.create_study(
    storage=storage, sampler=sampler, pruner=pruner, study_name="flaxlm",
    direction=direction, load_if_exists=True,
  )  # fmt: skip
  study.set_user_attr("metric", metric)
  return study


def finished_states() -> tuple:
  """The trial states `--trials` counts: complete or pruned (not failed, not running)."""
  from optuna.trial import TrialState

  return (TrialState.COMPLETE, TrialState.PRUNED)


def finished(study) -> int:
  return len(study.get_trials(deepcopy=False, states=finished_states()))


@dataclasses.dataclass
class Job:
  """What a trial runs: the config (a ConfigDict), how to type it and train it."""

  config: object
  kind: str  # 'finetune' | 'pretraining'
  dimensions: list
  records: object = None  # fine-tuning records read once for every trial (data not searched)

  @classmethod
  def of(cls, config, dimensions) -> tuple[Job, str, str, str]:
    """(the job of a finetune.py or train.py config, its entry point, the metric its runs
    keep their best by, 'maximize' or 'minimize'); a fine-tuning config is checked and its
    records read here, before any trial."""
    if "task" not in config:  # a train.py config
      return cls(config, "pretraining", dimensions), "train.py", "eval_loss", "minimize"
    from flaxlm.config.finetuning import from_config_dict
    from flaxlm.finetuning import inputs

    ft = from_config_dict(config)
    if ft.kfold:
      raise ConfigError("a search trains each trial once: set --config.kfold=0")
    stop = ft.early_stopping
    direction = "maximize" if stop.mode == "max" else "minimize"
    searched = {d.key.split(".")[0] for d in dimensions}
    records = None if searched & set(DATA_KEYS) else inputs.read_records(ft)
    return cls(config, "finetune", dimensions, records), "finetune.py", stop.metric, direction

  def run(self, values: dict, workdir: str, after_eval) -> dict:
    from flaxlm.config import dump_config_json

    c = copy.deepcopy(self.config)
    spaces.apply(c, values)
    if self.kind == "finetune":
      from flaxlm.config.finetuning import from_config_dict
      from flaxlm.finetuning import run as finetuning

      ft = from_config_dict(c)
      return finetuning.train(ft, workdir, dump_config_json(c), self.records, after_eval)
    from flaxlm.config import from_config_dict
    from flaxlm.pretraining import run as pretraining

    return pretraining.train(from_config_dict(c), workdir, dump_config_json(c), after_eval)


def objective(job: Job, c: SearchConfig, metric: str):
  """The Optuna objective: one trial's run, pruned by its own evaluations."""
  optuna = _optuna()

  def run_trial(trial) -> float:
    values = {d.key: d.suggest(trial) for d in job.dimensions}
    workdir = trial.user_attrs.get("workdir") or str(
      pathlib.Path(c.study_dir) / f"trial_{trial.number:04d}"
    )
    trial.set_user_attr("workdir", workdir)
    log.info("trial %d: %s -> %s", trial.number, values, workdir)

    def after_eval(step: int, metrics: dict) -> bool:
      if metric not in metrics or step < 1:
        return False
      trial.report(float(metrics[metric]), step)
      return trial.should_prune()

    result = job.run(values, workdir, after_eval)
    if result.get("interrupted"):
      trial.study.enqueue_trial(trial.params, user_attrs={"workdir": workdir})
      raise Stopped(f"trial {trial.number} saved at step {result['step']} and queued again")
    if metric not in result:
      raise ConfigError(f"the run reported no {metric!r} (its metrics: {sorted(result)})")
    value = float(result[metric])
    if result.get("pruned"):
      log.info("trial %d pruned at step %d: %s %.4f (the pruner: worse than the trials "
               "before it at this step)", trial.number, result["step"], metric, value)  # fmt: skip
      raise optuna.TrialPruned(f"pruned at step {result['step']}: {metric} {value:.4f}")
    return value

  return run_trial


def search(job: Job, c: SearchConfig, metric: str, direction: str):
  """Runs trials until the study holds `c.trials` finished ones; returns the study."""
  optuna = _optuna()
  check(c)
  study = open_study(c, metric, direction)
  done = finished(study)
  if done >= c.trials:
    log.info("the study already holds %d finished trials (--trials=%d): nothing to run",
             done, c.trials)  # fmt: skip
    return study
  log.info("study %s: %d of %d trials finished; running the rest", c.study_dir, done, c.trials)
  study.optimize(
    objective(job, c, metric),
    callbacks=[optuna.study.MaxTrialsCallback(c.trials, states=finished_states())],
    gc_after_trial=True,
  )
  return study
