"""A run's working directory: where each output lives, on local disk or in a bucket, and the
lock that keeps two runs out of one workdir.

Paths are `etils.epath.Path` (what Orbax uses): local paths become absolute, URLs such as
`gs://bucket/run` stay URLs (reading and writing them needs `gcsfs`, as Orbax does).

  <workdir>/checkpoints/<step>/   Orbax: train state + metadata (the newest few)
  <workdir>/best/<step>/          fine-tuning: the best checkpoint on the dev metric
  <workdir>/data/                 tokenizer and tokenized corpus, cached
  <workdir>/metrics.jsonl         one JSON object per logged step
  <workdir>/tensorboard/          event files
  <workdir>/run.lock              host and pid of the run using the workdir
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

from etils import epath

from flaxlm.errors import WorkdirError

log = logging.getLogger("flaxlm")


def as_path(path: str | os.PathLike) -> epath.Path:
  """Local paths absolute with `~` expanded; URLs (gs://, s3://, ...) unchanged."""
  text = os.fspath(path)
  if is_url(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def is_url(path: str | os.PathLike) -> bool:
  return "://" in os.fspath(path)


class Workdir:
  """The layout of one run's directory (see the module docstring)."""

  def __init__(self, path: str | os.PathLike):
    self.path = as_path(path)

  def __str__(self) -> str:
    return str(self.path)

  @property
  def checkpoints(self) -> epath.Path:
    return self.path / "checkpoints"

  @property
  def best(self) -> epath.Path:
    return self.path / "best"

  @property
  def data(self) -> epath.Path:
    return self.path / "data"

  @property
  def metrics_file(self) -> epath.Path:
    return self.path / "metrics.jsonl"

  @property
  def tensorboard(self) -> epath.Path:
    return self.path / "tensorboard"

  @property
  def lock_file(self) -> epath.Path:
    return self.path / "run.lock"

  def prepare(self) -> None:
    """Creates the workdir, or fails with one line if it is a file or cannot be written."""
    if self.path.exists() and not self.path.is_dir():
      raise WorkdirError(f"--workdir={self.path} is a file; pass a directory (new or a run's)")
    try:
      self.path.mkdir(parents=True, exist_ok=True)
      probe = self.path / f".write_test_{os.getpid()}"
      probe.write_text("")
      probe.unlink()
    except OSError as e:
      raise WorkdirError(
        f"cannot write to --workdir={self.path} ({e.strerror or e}); pass a writable directory"
      ) from None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


class WorkdirLock:
  """`<workdir>/run.lock` names the host and pid of the run that holds the workdir. A second
  run is refused (two runs would interleave metrics and delete each other's checkpoints); a
  lock left by a process that no longer exists on this host is taken over."""

  def __init__(self, workdir: Workdir):
    self.workdir, self.file = workdir, workdir.lock_file
    self.held = False

  def acquire(self) -> None:
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%F %T")}
    for _ in range(2):
      if self._create(json.dumps(me)):
        self.held = True
        return
      holder = self._holder()
      if holder is None:  # vanished between our attempts, or unreadable: try once more
        continue
      if holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
        log.warning(
          "taking over %s: its run (pid %s, started %s) is no longer running",
          self.file,
          holder.get("pid"),
          holder.get("since"),
        )
        self.file.unlink(missing_ok=True)
        continue
      raise WorkdirError(
        f"--workdir={self.workdir} is in use by another run (pid {holder.get('pid')} on "
        f"{holder.get('host')}, started {holder.get('since')}); wait for it to finish or stop "
        f"it, or pass another --workdir (if that run is gone, delete {self.file})"
      )
    raise WorkdirError(f"could not take the lock {self.file}; delete it if no run is using it")

  def _create(self, content: str) -> bool:
    if is_url(self.file):  # object stores have no O_EXCL; a check-then-write suffices there
      if self.file.exists():
        return False
      self.file.write_text(content)
      return True
    try:
      fd = os.open(os.fspath(self.file), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(content)
    return True

  def _holder(self) -> dict | None:
    try:
      return json.loads(self.file.read_text())
    except (OSError, ValueError):
      return None

  def release(self) -> None:
    if self.held:
      self.file.unlink(missing_ok=True)
      self.held = False

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()
