"""Hyperparameter search: space files checked before anything runs, a trial pruned by its own
evaluations stops early, and `python -m flaxlm.search` killed outright after two of three
trials resumes and runs exactly one more (the killed trial, on its own workdir), then writes
the trial table and plots of the stated size."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import samples
from conftest import REPO
from PIL import Image

from flaxlm.errors import ConfigError
from flaxlm.search import Job, SearchConfig, search, space, study

TOY_CONFIG = """
import pathlib, sys
sys.path.insert(0, {tests!r})
import samples

def get_config():
  c = samples.lstm_config(pathlib.Path({data!r}))
  c.early_stopping.metric = "eval_accuracy"
  return c
"""


def _space_file(tmp_path, content) -> str:
  path = tmp_path / "space.json"
  path.write_text(content if isinstance(content, str) else json.dumps(content))
  return str(path)


@pytest.mark.parametrize(
  "content, message",
  [
    ("{not json", r"space.json:1: not JSON"),
    ({"learning_rate": {"type": "loguniform", "low": 1, "high": 2}}, r"needs a type among"),
    ({"learning_rate": {"type": "uniform", "low": 1}}, r"missing \['high'\]"),
    ({"learning_rate": {"type": "log_uniform", "low": 0.0, "high": 1.0}}, r"above 0"),
    ({"learning_rate": {"type": "uniform", "low": 2.0, "high": 1.0}}, r"low < high"),
    ({"model.hiden_dim": {"type": "int", "low": 8, "high": 16}}, r"model has no 'hiden_dim'"),
    ({"tokenizer.kind": {"type": "uniform", "low": 0.0, "high": 1.0}}, r"not a number"),
  ],
)
def test_a_bad_space_file_is_named_before_any_trial_runs(tmp_path, content, message):
  with pytest.raises(ConfigError, match=message):
    dims = space.read(_space_file(tmp_path, content))
    space.check_against(dims, samples.lstm_config(tmp_path))


def test_a_trial_worse_than_the_median_is_pruned_at_its_first_evaluation(tmp_path):
  config = samples.lstm_config(tmp_path, num_train_steps=40, eval_every=10, checkpoint_every=40)
  config.early_stopping.metric = "eval_accuracy"
  dims = space.read(_space_file(tmp_path, {
    "learning_rate": {"type": "log_uniform", "low": 1e-7, "high": 1e-1},
  }))  # fmt: skip
  c = SearchConfig(trials=2, study_dir=str(tmp_path / "study"), startup_trials=1)
  s = study.open_study(c, "eval_accuracy", "maximize")
  s.enqueue_trial({"learning_rate": 1e-2})  # learns the toy task
  s.enqueue_trial({"learning_rate": 1e-7})  # cannot: stays at chance
  search(Job(config, "finetune", dims), c, "eval_accuracy", "maximize")
  good, bad = s.get_trials()
  assert good.state.name == "COMPLETE" and good.value > 0.8
  assert bad.state.name == "PRUNED" and bad.last_step == 10  # of 40
  steps = [
    json.loads(line)["step"] for line in open(tmp_path / "study" / "trial_0001" / "metrics.jsonl")
  ]
  assert max(steps) == 10


@pytest.mark.parametrize("sampler, pruner", [("tpe", "median"), ("random", "hyperband"),
                                             ("random", "none")])  # fmt: skip
def test_each_sampler_and_pruner_is_optunas_own(tmp_path, sampler, pruner):
  import optuna

  c = SearchConfig(trials=1, study_dir=str(tmp_path), sampler=sampler, pruner=pruner, seed=3)
  s = study.open_study(c, "eval_loss", "minimize")
  samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
  pruners = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
             "none": optuna.pruners.NopPruner}  # fmt: skip
  assert isinstance(s.sampler, samplers[sampler]) and isinstance(s.pruner, pruners[pruner])
  assert s.direction.name == "MINIMIZE" and (tmp_path / "study.db").exists()
  with pytest.raises(ConfigError, match="--sampler"):
    study.check(SearchConfig(trials=1, study_dir=str(tmp_path), sampler="grid"))


def _states(db) -> list[str]:
  with sqlite3.connect(db) as con:
    return [s for (s,) in con.execute("SELECT state FROM trials ORDER BY number")]


@pytest.mark.slow
def test_a_killed_search_resumes_and_runs_exactly_the_missing_trial(tmp_path):
  config = tmp_path / "toy.py"
  config.write_text(TOY_CONFIG.format(tests=str(REPO / "tests"), data=str(tmp_path)))
  spec = _space_file(tmp_path, {"learning_rate": {"type": "log_uniform", "low": 3e-3, "high": 3e-2},
                                "model.hidden_dim": {"type": "categorical", "choices": [8, 16]}})  # fmt: skip
  folder = tmp_path / "study"
  args = [sys.executable, "-m", "flaxlm.search", f"--config={config}", f"--space={spec}",
          "--trials=3", f"--study_dir={folder}", "--pruner=none", "--heartbeat=1",
          "--grace_period=2"]  # fmt: skip
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  log = tmp_path / "first.log"
  with open(log, "w") as err:
    first = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 300
    while "trial 2: " not in log.read_text() and first.poll() is None and time.time() < deadline:
      time.sleep(0.2)
    time.sleep(2)  # the third trial is training
    first.send_signal(signal.SIGKILL)
    first.wait()
  assert _states(folder / "study.db") == ["COMPLETE", "COMPLETE", "RUNNING"]
  time.sleep(3)  # past the grace period: its heartbeat has stopped

  second = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert second.returncode == 0, second.stderr[-2000:]
  started = [line for line in second.stderr.splitlines() if " -> " in line and "trial " in line]
  assert len(started) == 1 and started[0].endswith("trial_0002"), started  # the killed one
  assert "trial 2 stopped beating" in second.stderr
  assert _states(folder / "study.db") == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
  summary = json.loads(second.stdout.strip().splitlines()[-1])
  assert summary["trials"] == 4 and summary["best"]["value"] > 0.5
  assert set(summary["pngs"]) == {"optimization_history.png", "param_importances.png",
                                  "parallel_coordinate.png"}  # fmt: skip
  for name, size in summary["pngs"].items():
    with Image.open(folder / name) as image:
      image.load()
      assert image.size == tuple(size), name
  rows = (folder / "trials.csv").read_text().splitlines()
  assert len(rows) == 5 and rows[0].startswith("number,state,value")
  assert (
    "--config.learning_rate=" in json.loads((folder / "best_trial.json").read_text())["command"]
  )

  third = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert third.returncode == 0 and "already holds 3 finished trials" in third.stderr


@pytest.mark.slow
def test_a_pretraining_config_is_searched_on_its_eval_loss_on_a_sharded_mesh(tmp_path, tfds_dir):
  from test_configs import load

  c = load(REPO / "configs" / "gpt_tiny.py")
  samples.set_keys(c, {
    "tokenizer.kind": "byte", "model.num_layers": 1, "model.embed_dim": 32,
    "model.num_heads": 2, "model.mlp_dim": 64, "seq_len": 32, "batch_size": 8,
    "eval_batch_size": 8, "eval_batches": 1, "sample_tokens": 0, "num_train_steps": 4,
    "eval_every": 2, "checkpoint_every": 4, "data_dir": tfds_dir,
    "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2,  # trials on the emulated 2x2x2 mesh
  })  # fmt: skip
  dims = space.read(_space_file(tmp_path, {"learning_rate": {"type": "log_uniform", "low": 1e-4,
                                                             "high": 1e-2}}))  # fmt: skip
  cfg = SearchConfig(trials=2, study_dir=str(tmp_path / "study"), startup_trials=1)
  s = search(Job(c, "pretraining", dims), cfg, "eval_loss", "minimize")
  values = [t.value for t in s.get_trials() if t.state.name == "COMPLETE"]
  assert len(values) >= 1 and all(0 < v < 10 for v in values)
  assert (tmp_path / "study" / "trial_0000" / "checkpoints").exists()
