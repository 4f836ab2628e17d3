"""The one training loop, shared by pretraining (train.py) and fine-tuning (finetune.py).

It steps, logs, evaluates, saves, resumes and stops; it knows nothing of objectives or tasks.
A caller hands it a `Job`: the trainable (model, optimizer, sharded steps), a Grain dataset
whose item s is the global batch of step s, an `evaluate(params) -> eval metrics` function
and the metadata every checkpoint carries (tokenizer, model and run config, task).

Resume is exact: the state (params, optimizer, step, RNG) and the data iterator position come
back from the newest good checkpoint, dropout keys are fold_in(rng, step) and batches are a
pure function of (seed, step). With an early-stopping metric the best parameters on the dev
set are kept in `<workdir>/best/`, and training stops after `patience` evaluations without
improvement. A preemption (SIGTERM) or Ctrl-C saves the current step and exits without
evaluating; on several hosts they first agree on the step to stop at, so none is left
waiting in a collective. A second signal exits at once.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
import time
from collections.abc import Callable

import jax
import numpy as np

from flaxlm.config import EarlyStopping, LoopConfig  # noqa: F401  (the loop's settings)
from flaxlm.errors import TrainingDivergedError
from flaxlm.nn import sharding
from flaxlm.train import reporting
from flaxlm.train.checkpoint import Checkpointer
from flaxlm.train.steps import Trainable, TrainState
from flaxlm.workdir import Workdir

log = logging.getLogger("flaxlm")


@dataclasses.dataclass
class Job:
  """What a caller gives the loop."""

  trainable: Trainable
  dataset: object  # grain.MapDataset of global numpy batches
  evaluate: Callable[[object], dict]  # params -> {'eval_...': value}
  meta: Callable[[], dict]  # JSON metadata for every checkpoint, besides step and iterator
  initial_state: Callable[[], TrainState]  # the state of a fresh run
  tokens_per_step: int = 0
  examples_per_step: int = 0
  flops_per_token: float = 0.0
  # > 0: dataset items are this host's rows of a global batch of that size (else whole ones)
  global_batch: int = 0
  data_workers: int = 0  # processes making examples (pipeline.iterate)
  # (step, metrics) after each evaluation -> True to end the run there, saved (a
  # hyperparameter search pruning its trial: flaxlm.search)
  after_eval: Callable[[int, dict], bool] | None = None


@dataclasses.dataclass
class Result:
  step: int
  state: TrainState
  metrics: dict  # the last logged values
  interrupted: bool  # stopped by a signal (saved; rerun to resume)
  early_stopped: bool
  best: dict | None  # {'metric', 'value', 'step'} of the best checkpoint
  pruned: bool = False  # ended by `Job.after_eval`


class StopSignal:
  """Turns SIGTERM (e.g. TPU preemption) and SIGINT (Ctrl-C) into a stop at an agreed step.

  One process: the first signal asks to stop after the current step, a second exits at once.
  Several processes: JAX's preemption service owns SIGTERM (registered by
  `jax.distributed.initialize`) and every process stops at the step it syncs to
  (`multihost_utils.reached_preemption_sync_point`); SIGINT is forwarded to it as SIGTERM."""

  def __init__(self):
    self.received: str | None = None
    self.multihost = jax.process_count() > 1
    self._old = {}
    signals = (signal.SIGINT,) if self.multihost else (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. inside some test runners)
        pass

  def _handle(self, signum, frame):
    if self.received:  # a second signal: the user means it
      os._exit(128 + signum)
    self.received = signal.Signals(signum).name
    if self.multihost:  # let the preemption service agree on a step with the other hosts
      os.kill(os.getpid(), signal.SIGTERM)

  def should_stop(self, step: int) -> bool:
    if not self.multihost:
      return self.received is not None
    from jax.experimental import multihost_utils

    if multihost_utils.reached_preemption_sync_point(step):
      self.received = self.received or "SIGTERM"
      return True
    return False

  def restore(self):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


class BestTracker:
  """The best value of the early-stopping metric so far, and evaluations since it improved."""

  def __init__(self, config: EarlyStopping, saved: dict | None):
    self.config = config
    saved = saved or {}
    self.value, self.step = saved.get("value"), saved.get("step")
    self.evals_since = saved.get("evals_since", 0)

  def update(self, step: int, metrics: dict) -> bool:
    """Records an evaluation; True when it is the best so far."""
    if not self.config.metric or step < self.config.start_step:
      return False
    if self.config.metric not in metrics:
      raise KeyError(
        f"early_stopping.metric={self.config.metric!r} is not among this run's eval metrics "
        f"{sorted(metrics)}"
      )
    value = float(metrics[self.config.metric])
    sign = 1.0 if self.config.mode == "max" else -1.0
    if self.value is None or sign * (value - self.value) > 0:
      self.value, self.step, self.evals_since = value, step, 0
      return True
    self.evals_since += 1
    return False

  @property
  def exhausted(self) -> bool:
    return bool(self.config.patience) and self.evals_since >= self.config.patience

  def to_json(self) -> dict:
    return {
      "metric": self.config.metric,
      "value": self.value,
      "step": self.step,
      "evals_since": self.evals_since,
    }


def run(
  job: Job,
  config: LoopConfig,
  workdir: Workdir,
  ckpt: Checkpointer,
  restored: tuple[int, TrainState, dict] | None = None,
) -> Result:
  """Trains to `config.num_train_steps` from `restored` (step, state, meta of a checkpoint)
  or from `job.initial_state()`; see the module docstring."""
  start, state, meta = _starting_point(job, ckpt, restored)
  best = BestTracker(config.early_stopping, meta.get("best"))
  if restored and best.exhausted:  # the run had stopped early: it is complete
    log.info("step %d: this run stopped early (no improvement in %s); nothing to do", start,
             config.early_stopping.metric)  # fmt: skip
    return Result(start, state, {}, False, True, best.to_json())
  best_ckpt = None
  if config.early_stopping.metric:
    best_ckpt = Checkpointer(workdir.best, keep=1, save_every=1)

  from flaxlm.data import pipeline  # Grain loads with the first run, not with the config

  data_iter = pipeline.iterate(job.dataset, job.data_workers, start)  # item s: step s's batch
  throughput = reporting.Throughput(
    job.tokens_per_step,
    job.flops_per_token,
    reporting.device_peak_flops(config.peak_flops),
    job.examples_per_step,
  )
  writer = reporting.MetricsWriter(workdir)
  progress = reporting.Progress(config.num_train_steps, start, config.early_stopping.metric)
  stop = StopSignal()
  meta_now = lambda step: _checkpoint_meta(job, step, best)
  to_global = functools.partial(_global_batch, job, sharding.batch_sharding(job.trainable.mesh))
  pending, last, step, early_stopped, pruned = [], {}, start, False, False
  started = time.time()  # wall clock of this process's loop: compile and evals included
  try:
    while step < config.num_train_steps:
      state, step_metrics = job.trainable.train_step(state, to_global(next(data_iter)))
      step += 1
      pending.append(step_metrics)
      if len(pending) > 2:  # dispatch runs at most two steps ahead, so a stop saves promptly
        jax.block_until_ready(pending[-3])
      throughput.tick()
      if step == start + 1:  # leave compilation out of the throughput
        jax.block_until_ready(step_metrics)
        throughput.measure()
      stopping = stop.should_stop(step)
      is_last, do_eval, do_save = _due(step, config, stopping)
      if not (do_eval or do_save or step % config.log_every == 0):
        continue
      last = _check_finite(jax.device_get(pending), step - len(pending) + 1, ckpt)
      pending = []
      last.update(throughput.measure(), elapsed_sec=time.time() - started)
      if stopping:  # a preemption notice leaves seconds: save first, evaluate never
        writer.write(step, last)
        ckpt.save(step, job.trainable.to_checkpoint(state), meta_now(step), force=True)
        log.warning("received %s: saved step %d, exiting", stop.received, step)
        break
      if do_eval:
        with throughput.paused():
          last.update(job.evaluate(state.params))
          if best.update(step, last) and best_ckpt is not None:
            params = job.trainable.saved_params(state.params)
            best_ckpt.save(step, {"params": params}, meta_now(step), force=True)
        early_stopped = best.exhausted and not is_last
        pruned = job.after_eval is not None and job.after_eval(step, last) and not is_last
      writer.write(step, last)
      progress.update(step, last)
      if do_save or early_stopped or pruned:
        with throughput.paused():
          ckpt.save(step, job.trainable.to_checkpoint(state), meta_now(step),
                    force=is_last or early_stopped or pruned)  # fmt: skip
      if pruned:
        log.info("step %d: stopped by the caller after this evaluation (a pruned trial)", step)
        break
      if early_stopped:
        log.info("early stopping at step %d: %s has not improved for %d evaluations (best "
                 "%.4f at step %d)", step, config.early_stopping.metric, best.evals_since,
                 best.value, best.step)  # fmt: skip
        break
  finally:
    stop.restore()
    progress.close()
    writer.close()
    ckpt.wait()
    if best_ckpt is not None:
      best_ckpt.close()
  best_json = best.to_json() if config.early_stopping.metric else None
  return Result(step, state, last, stop.received is not None, early_stopped, best_json, pruned)


def _global_batch(job: Job, batch_sharding, batch: dict):
  """This host's batch as the global array the step takes (its rows of it, multi-host)."""
  if job.global_batch:
    return sharding.local_to_global(batch, batch_sharding, job.global_batch)
  return sharding.to_global(batch, batch_sharding)


def _checkpoint_meta(job: Job, step: int, best: BestTracker) -> dict:
  return {
    **job.meta(),
    "step": int(step),
    "data_iterator": {"next_index": int(step)},  # Grain's state of a 0-worker iterator
    "best": best.to_json(),
  }


def _starting_point(job: Job, ckpt: Checkpointer, restored) -> tuple[int, TrainState, dict]:
  """(step, state, checkpoint meta) the loop starts from: a restored checkpoint, or step 0."""
  if restored:
    start, state, meta = restored
    log.info("resumed from step %d in %s", start, ckpt.directory)
    return start, state, meta
  return 0, job.initial_state(), {}


def _due(step: int, config: LoopConfig, stopping: bool) -> tuple[bool, bool, bool]:
  """(is the last step, evaluate now, save now): a stop saves and never evaluates."""
  is_last = step == config.num_train_steps
  do_eval = not stopping and (is_last or bool(config.eval_every and step % config.eval_every == 0))
  periodic_save = bool(config.checkpoint_every and step % config.checkpoint_every == 0)
  return is_last, do_eval, is_last or stopping or periodic_save


def _check_finite(rows: list[dict], first_step: int, ckpt: Checkpointer) -> dict:
  for i, row in enumerate(rows):
    if not bool(row["finite"]):
      ckpt.wait()
      raise TrainingDivergedError(
        f"loss is {float(row['loss'])} (grad norm {float(row['grad_norm'])}) at step "
        f"{first_step + i}; that update was not applied and no checkpoint holds it "
        f"(newest good checkpoint: step {ckpt.latest_step()}). Lower --config.learning_rate, "
        "keep --config.grad_clip_norm > 0, try --config.z_loss=1e-4, or check the data."
      )
  out = {k: float(v) for k, v in rows[-1].items() if k != "finite"}
  out["loss_avg"] = float(np.mean([r["loss"] for r in rows]))  # since the last log line
  return out
