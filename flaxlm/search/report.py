"""What a search leaves in its study_dir besides the study: every trial as a table (CSV and
JSON), the best trial's values, its full config and the command that reruns it, and Optuna's
plots (optimization history, parameter importances, parallel coordinates) as PNGs of a
stated size."""

from __future__ import annotations

import csv
import json
import pathlib
import shlex

from flaxlm.train import reporting

PLOTS = ("optimization_history", "param_importances", "parallel_coordinate")


def trial_rows(study) -> list[dict]:
  """One row per trial: number, state, value, each searched key, the last step it reported,
  its duration and workdir."""
  rows = []
  for t in study.get_trials(deepcopy=False):
    duration = t.duration.total_seconds() if t.duration else None
    rows.append({
      "number": t.number, "state": t.state.name, "value": t.value,
      **{f"params.{k}": v for k, v in t.params.items()},
      "last_step": t.last_step, "duration_s": None if duration is None else round(duration, 1),
      "workdir": t.user_attrs.get("workdir", ""),
    })  # fmt: skip
  return rows


def best_trial(study):
  from optuna.trial import TrialState

  return study.best_trial if study.get_trials(states=(TrialState.COMPLETE,)) else None


def rerun_command(entry_point: str, config_path: str, values: dict, workdir: str) -> str:
  flags = [f"--config={config_path}", f"--workdir={workdir}"]
  flags += [f"--config.{k}={v}" for k, v in values.items()]
  return " ".join(["python", entry_point, *(shlex.quote(f) for f in flags)])


def write(study, folder: pathlib.Path, job, entry_point: str, config_path: str) -> dict:
  """Writes trials.csv, trials.json, best_trial.json, best_config.json and the plots;
  returns a summary (the best trial and {png: (width, height)})."""
  from flaxlm.config import dump_config_json
  from flaxlm.search import space

  rows = trial_rows(study)
  columns = list(dict.fromkeys(k for r in rows for k in r))
  with open(folder / "trials.csv", "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)
  (folder / "trials.json").write_text(json.dumps(rows, indent=1, default=str), encoding="utf-8")
  summary = {"trials": len(rows), "metric": study.user_attrs.get("metric"), "best": None}
  best = best_trial(study)
  if best is not None:
    config = job.config.copy_and_resolve_references()
    space.apply(config, best.params)
    workdir = best.user_attrs.get("workdir", "")
    summary["best"] = {
      "number": best.number, "value": best.value, "params": best.params, "workdir": workdir,
      "command": rerun_command(entry_point, config_path, best.params, "<new workdir>"),
    }  # fmt: skip
    (folder / "best_trial.json").write_text(json.dumps(summary["best"], indent=1))
    (folder / "best_config.json").write_text(json.dumps(dump_config_json(config), indent=1))
  summary["pngs"] = plots(study, folder)
  return summary


def plots(study, folder: pathlib.Path) -> dict[str, tuple[int, int]]:
  """Optuna's matplotlib plots as fixed-size PNGs; a plot its data cannot make yet (the
  importances need two finished trials that differ) is left out."""
  import warnings

  from optuna.visualization import matplotlib as optuna_plots

  plt = reporting.pyplot(needed_by="search")
  written = {}
  for name in PLOTS:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
      try:
        ax = getattr(optuna_plots, f"plot_{name}")(study)
      except (ValueError, RuntimeError):
        continue
    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    fig.set_size_inches(9, 5.5)
    fig.tight_layout()
    written[f"{name}.png"] = reporting.save_figure(fig, folder / f"{name}.png")
  plt.close("all")
  return written
