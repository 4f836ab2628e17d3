"""The pretraining loop: data -> sharded steps -> metrics, evals and checkpoints.

Resume is exact: the state (params, optimizer, step, RNG) and the data iterator position
are restored from the newest checkpoint in the workdir, dropout keys are fold_in(rng, step)
and the batch of step s is a pure function of (seed, s).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time

import jax
import numpy as np

from flaxlm import checkpoint, metrics, objectives, optim, sharding
from flaxlm.config import RunConfig, from_saved
from flaxlm.data import pipeline, tokenizers
from flaxlm.models import registry
from flaxlm.training import Trainable

log = logging.getLogger("flaxlm")


class TrainingDivergedError(FloatingPointError):
  """The loss or gradient norm became NaN/Inf."""


def round_up(n: int, multiple: int) -> int:
  return n if multiple <= 1 else -(-n // multiple) * multiple


def build(run: RunConfig, vocab_size: int, mesh=None) -> Trainable:
  """Model + optimizer + sharded layout for this run, with the model vocab fitted to the tokenizer."""
  model_config = run.model
  if not model_config.vocab_size:
    model_config = dataclasses.replace(
      model_config, vocab_size=round_up(vocab_size, run.pad_vocab_to)
    )
  elif model_config.vocab_size < vocab_size:
    raise ValueError(
      f"model.vocab_size={model_config.vocab_size} is smaller than the tokenizer's {vocab_size}; "
      "set --config.model.vocab_size=0 to size it from the tokenizer"
    )
  objectives.check_objective(run.objective)
  mesh = mesh or sharding.make_mesh(run.mesh)
  dp = sharding.data_parallel_size(mesh)
  if run.batch_size % (dp * run.step.accum_steps):
    raise ValueError(
      f"batch_size={run.batch_size} must be divisible by data-parallel size {dp} x accum_steps "
      f"{run.step.accum_steps}"
    )
  return Trainable(
    model=registry.build_model(run.model_family, model_config),
    tx=optim.make_optimizer(run.optim),
    schedule=optim.schedule(run.optim),
    mesh=mesh,
    rules=sharding.rules_from_config(run.logical_axis_rules),
    objective=objectives.LOSSES[run.objective],
    step_config=run.step,
    init_shape=(dp, min(run.data.seq_len, 8)),
  )


def run_objective(run: RunConfig, tokenizer) -> objectives.Objective:
  """The run's objective with the tokenizer's special ids (masks, sentinels, EOS)."""
  return objectives.make_objective(
    run.objective,
    tokenizer,
    seq_len=run.data.seq_len,
    masking=run.masking,
    spans=run.spans,
    target_len=run.data.target_len,
    pairs_per_example=run.data.pairs_per_example,
  )


def model_config_json(trainable: Trainable) -> dict:
  return dataclasses.asdict(trainable.model.config)


class _StopSignal:
  """Turns SIGTERM/SIGINT (e.g. TPU preemption, Ctrl-C) into a save-and-exit at the next step."""

  def __init__(self):
    self.received = None
    self._old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. inside some test runners)
        pass

  def _handle(self, signum, frame):
    self.received = signal.Signals(signum).name

  def restore(self):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


def evaluate(trainable: Trainable, params, batches) -> dict:
  sums = None
  for batch in batches:
    out = trainable.eval_step(params, batch)
    sums = out if sums is None else jax.tree.map(np.add, sums, out)
  sums = jax.device_get(sums)
  w = max(float(sums["weight_sum"]), 1.0)
  loss = float(sums["nll_sum"]) / w
  out = {
    "eval_loss": loss,
    "eval_accuracy": float(sums["correct_sum"]) / w,
    "eval_perplexity": math.exp(min(loss, 50.0)),
  }
  if "at_mask_count" in sums:  # masked LM: accuracy at the slots that show [MASK]
    count = max(float(sums["at_mask_count"]), 1.0)
    out["eval_accuracy_at_mask"] = float(sums["at_mask_correct_sum"]) / count
  if "nsp_count" in sums:  # BERT's next-sentence prediction
    out["eval_nsp_accuracy"] = float(sums["nsp_correct_sum"]) / max(float(sums["nsp_count"]), 1.0)
  return out


def train(run: RunConfig, workdir: str, config_json: dict | None = None) -> dict:
  """Trains to `run.num_train_steps`, resuming from `workdir` if it holds a checkpoint.

  Returns the last logged metrics (with `eval_loss`)."""
  os.makedirs(workdir, exist_ok=True)
  ckpt = checkpoint.Checkpointer(
    os.path.join(workdir, "checkpoints"), keep=run.keep_checkpoints, save_every=run.checkpoint_every
  )
  meta = ckpt.restore_meta()
  saved_tokenizer = tokenizers.tokenizer_from_json(meta["tokenizer"]) if meta else None
  corpus = pipeline.load_corpus(
    run.data, run.tokenizer, os.path.join(workdir, "data"), saved_tokenizer
  )
  objective = run_objective(run, corpus.tokenizer)
  trainable = build(run, corpus.tokenizer.vocab_size)
  if meta and meta.get("model") != model_config_json(trainable):
    raise checkpoint.CheckpointMismatchError(
      f"the checkpoint in {ckpt.directory} was trained with model {meta.get('model')}, but this run "
      f"builds {model_config_json(trainable)}. Use the original config or a fresh --workdir."
    )
  if meta:
    state = ckpt.restore_state(trainable.abstract_state)
    log.info("resumed from step %d in %s", int(state.step), ckpt.directory)
  else:
    state = trainable.init_state(run.seed)
  start = int(jax.device_get(state.step))

  data_iter = iter(
    pipeline.train_dataset(corpus.train, run.data, run.batch_size, objective).to_iter_dataset()
  )
  data_iter.set_state({"next_index": start} if not meta else meta["data_iterator"])
  batch_sharding = sharding.batch_sharding(trainable.mesh)
  eval_examples = pipeline.eval_batches(
    corpus.validation, run.data, run.eval_batch_size, run.eval_batches, objective
  )
  eval_set = [pipeline.to_global(b, batch_sharding) for b in eval_examples]

  family = registry.family_of(run.model_family)
  flops_per_token = family.flops_per_token(
    trainable.model.config, run.data.seq_len, objective.target_len
  )
  tokens_per_step = run.batch_size * (run.data.seq_len + objective.target_len)
  throughput = metrics.Throughput(
    tokens_per_step, flops_per_token, metrics.device_peak_flops(run.peak_flops)
  )
  writer = metrics.MetricsWriter(workdir)
  progress = metrics.Progress(run.num_train_steps, start)
  stop = _StopSignal()
  if jax.process_index() == 0:
    n_params = sum(x.size for x in jax.tree.leaves(trainable.abstract_state.params))
    log.info(
      "model %s: %.2fM parameters, %.3g training FLOPs/token, mesh %s",
      run.model_family,
      n_params / 1e6,
      flops_per_token,
      dict(trainable.mesh.shape),
    )

  def meta_now(step_state) -> dict:
    return {
      "step": int(step_state),
      "data_iterator": data_iter.get_state(),
      "tokenizer": corpus.tokenizer.to_json(),
      "model": model_config_json(trainable),
      "model_family": run.model_family,
      "config": config_json or {},
    }

  pending, last, step = [], {}, start
  started = time.time()  # wall clock of this process's loop: compile and evals included
  try:
    while step < run.num_train_steps:
      batch = pipeline.to_global(next(data_iter), batch_sharding)
      state, step_metrics = trainable.train_step(state, batch)
      step += 1
      pending.append(step_metrics)
      throughput.tick()
      if step == start + 1:  # leave compilation out of tokens/s
        jax.block_until_ready(step_metrics)
        throughput.measure()
      is_last = step == run.num_train_steps or stop.received
      do_eval = is_last or (run.eval_every and step % run.eval_every == 0)
      do_save = is_last or (run.checkpoint_every and step % run.checkpoint_every == 0)
      if not (do_eval or do_save or step % run.log_every == 0):
        continue
      last = _check_finite(jax.device_get(pending), step - len(pending) + 1, ckpt)
      pending = []
      last.update(throughput.measure())
      last["elapsed_sec"] = time.time() - started
      if do_eval:
        throughput.pause()
        last.update(evaluate(trainable, state.params, eval_set))
        throughput.resume()
      writer.write(step, last)
      progress.update(step, last)
      if do_save:
        throughput.pause()
        ckpt.save(step, state, meta_now(step), force=is_last)
        throughput.resume()
      if stop.received:
        if not do_save:  # the signal came after is_last was read (during eval or logging)
          ckpt.save(step, state, meta_now(step), force=True)
        log.warning("received %s: saved step %d, exiting", stop.received, step)
        break
  finally:
    stop.restore()
    progress.close()
    writer.close()
    ckpt.close()
  return {
    "step": step,
    "interrupted": stop.received is not None,  # SIGTERM/SIGINT: saved and stopped early
    **last,
    "state": state,
    "trainable": trainable,
    "tokenizer": corpus.tokenizer,
    "eval_example": jax.tree.map(lambda x: x[0], eval_examples[0]),  # numpy, for reports
  }


def load_trained(workdir: str, mesh=None) -> tuple[Trainable, object, object]:
  """(trainable, params, tokenizer) from the newest checkpoint in `workdir` (for sampling,
  evaluation or fine-tuning).

  The run config, model config and tokenizer all come from the checkpoint itself, so the
  tokenizer is always the one the model was trained with. `mesh` defaults to one device.
  """
  ckpt = checkpoint.Checkpointer(
    os.path.join(workdir, "checkpoints"), async_save=False, create=False
  )
  try:
    meta = ckpt.restore_meta()
    if meta is None:
      raise FileNotFoundError(
        f"no checkpoint in {ckpt.directory}; train one first: "
        f"python train.py --config=configs/gpt_tiny.py --workdir={workdir}"
      )
    run = from_saved(meta["config"])
    tokenizer = tokenizers.tokenizer_from_json(meta["tokenizer"])
    run = dataclasses.replace(
      run,
      model=registry.model_config(meta["model_family"], meta["model"]),
      batch_size=1,
      step=dataclasses.replace(run.step, accum_steps=1),
    )
    mesh = mesh or sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    trainable = build(run, tokenizer.vocab_size, mesh)
    state = ckpt.restore_state(trainable.abstract_state)
  finally:
    ckpt.close()
  return trainable, state.params, tokenizer


def _check_finite(rows: list[dict], first_step: int, ckpt: checkpoint.Checkpointer) -> dict:
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


def dump_config_json(c) -> dict:
  return json.loads(c.to_json_best_effort())
