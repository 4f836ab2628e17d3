"""Workdir paths (local and bucket URLs), the run lock, and Orbax's cleanup of killed saves."""

import json
import os

import pytest

from flaxlm.errors import WorkdirError
from flaxlm.train import checkpoint, reporting
from flaxlm.workdir import Workdir, WorkdirLock, as_path, is_url


def test_bucket_urls_stay_urls():
  """gs:// (or any URL) is never made into a local './gs:/...' folder; every output path is
  the URL joined with its name."""
  w = Workdir("gs://bucket/runs/bert")
  assert is_url(w.path) and str(w.path) == "gs://bucket/runs/bert"
  assert str(w.checkpoints) == "gs://bucket/runs/bert/checkpoints"
  assert str(w.best) == "gs://bucket/runs/bert/best"
  assert str(w.data / "train.npy") == "gs://bucket/runs/bert/data/train.npy"
  assert str(w.metrics_file) == "gs://bucket/runs/bert/metrics.jsonl"
  assert str(as_path("s3://b/x")) == "s3://b/x"


def test_local_paths_become_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(Workdir("runs/a").path) == os.path.join(str(tmp_path), "runs", "a")
  monkeypatch.setenv("HOME", str(tmp_path))
  assert str(as_path("~/x")) == os.path.join(str(tmp_path), "x")


def test_checkpointer_keeps_a_bucket_url(monkeypatch):
  """The Checkpointer hands Orbax the URL itself (Orbax reads buckets through epath)."""
  seen = {}

  class Manager:
    def __init__(self, directory, options):
      seen["directory"] = directory

  monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", Manager)
  ckpt = checkpoint.Checkpointer("gs://bucket/run/checkpoints", create=False)
  assert str(seen["directory"]) == "gs://bucket/run/checkpoints" == str(ckpt.directory)


def test_metrics_in_a_bucket_are_rewritten_not_appended(tmp_path, monkeypatch):
  """Object stores cannot append: a workdir given as a URL gets metrics.jsonl rewritten whole."""
  w = Workdir(tmp_path)
  monkeypatch.setattr(reporting, "is_url", lambda path: True)
  writer = reporting.MetricsWriter(w)
  writer.write(1, {"loss": 2.0})
  writer.write(2, {"loss": 1.5})
  writer.close()
  assert [json.loads(x)["step"] for x in w.metrics_file.read_text().splitlines()] == [1, 2]
  again = reporting.MetricsWriter(w)  # a resumed run keeps the rows already there
  again.write(3, {"loss": 1.0})
  assert len(w.metrics_file.read_text().splitlines()) == 3


def test_lock_refuses_a_live_run_and_takes_over_a_dead_one(tmp_path):
  w = Workdir(tmp_path)
  first = WorkdirLock(w)
  first.acquire()
  holder = json.loads(w.lock_file.read_text())
  assert holder["pid"] == os.getpid() and holder["host"]
  with pytest.raises(WorkdirError, match=f"in use by another run \\(pid {os.getpid()}"):
    WorkdirLock(w).acquire()
  first.release()
  assert not w.lock_file.exists()
  w.lock_file.write_text(json.dumps({"host": os.uname().nodename, "pid": 2**22 + 7}))
  with WorkdirLock(w):
    assert json.loads(w.lock_file.read_text())["pid"] == os.getpid()
  assert not w.lock_file.exists()


def test_killed_saves_leave_no_temporary_folders(tmp_path):
  """A save killed mid-write leaves an Orbax temporary folder; the next run removes it."""
  stale = tmp_path / "5.orbax-checkpoint-tmp"
  (stale / "state").mkdir(parents=True)
  (stale / "state" / "partial").write_bytes(b"x" * 100)
  ckpt = checkpoint.Checkpointer(tmp_path)
  assert ckpt.latest_step() is None
  ckpt.close()
  assert not stale.exists()
