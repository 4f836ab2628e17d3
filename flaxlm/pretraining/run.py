"""Pretraining: a corpus and an objective, handed to the shared loop (`flaxlm.train.loop`).

`check(run, workdir)` validates everything that can be validated before data is read (the
mesh and batch sizes, the objective against the family and the tokenizer's reserved tokens,
sequence lengths against position tables, parameter shapes against mesh axes, dataset
strings, the workdir); `train` then tokenizes (once; cached), builds the sharded model and
runs the loop. A rerun resumes; changing what shapes the data or the model between runs is
refused with the keys that changed.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import jax

from flaxlm import objectives
from flaxlm.config import RunConfig, check_same_settings, from_saved, setting_values
from flaxlm.data import corpus, pipeline, tokenizers
from flaxlm.errors import CheckpointMismatchError, ConfigError
from flaxlm.models import registry
from flaxlm.nn import attention, sharding
from flaxlm.pretraining import transfer
from flaxlm.pretraining.load import build
from flaxlm.train import loop, reporting, validation
from flaxlm.train.checkpoint import Checkpointer
from flaxlm.train.steps import Trainable
from flaxlm.workdir import Workdir, WorkdirLock

log = logging.getLogger("flaxlm")

# Keys that decide which batch step s holds (and what a saved iterator position means): a
# resumed run must keep them. Model architecture is compared separately.
DATA_KEYS = (
  "model_family",
  "objective",
  "batch_size",
  "seed",
  "data.dataset",
  "data.text_feature",
  "data.seq_len",
  "data.window_stride",
  "data.val_fraction",
  "data.target_len",
  "data.pairs_per_example",
  "tokenizer",
  "masking",
  "spans",
)


def maxtext_flops(run: RunConfig, model_config) -> float:
  """FLOPs per token with causal attention halved (MaxText's count), for decoders whose
  attention kernel skips the masked blocks; 0 (not reported) otherwise."""
  family = registry.family_of(run.model_family)
  kernel = attention.resolve(model_config.attention_impl, model_config.compute_dtype)
  if family.kind != "decoder" or kernel not in attention.SKIP_MASKED_BLOCKS:
    return 0.0
  return family.flops_per_token(model_config, run.data.seq_len, causal=True)


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


def check(run: RunConfig, workdir: Workdir | None = None) -> None:
  """Every check that needs no data (see the module docstring); raises FlaxlmErrors."""
  family = registry.family_of(run.model_family)
  if not family.objectives:
    raise ConfigError(
      f"model_family={run.model_family!r} has no pretraining objective; it is a fine-tuning "
      "baseline: python finetune.py --config=configs/finetune_sst2_lstm.py --workdir=<dir>"
    )
  objectives.check_objective(run.objective)
  if run.objective not in family.objectives:
    raise ConfigError(
      f"objective={run.objective!r} does not train model_family={run.model_family!r}; "
      f"it trains {list(family.objectives)}"
    )
  validation.check_loop_keys(run)
  validation.check_objective_tokens(run.objective, run.tokenizer)
  lengths = {"seq_len": run.data.seq_len}
  if run.objective == "span_corruption":
    lengths["target_len (span corruption)"] = run_objective_target_len(run)
  elif family.kind == "encdec":
    lengths["target_len"] = run.data.target_len or run.data.seq_len
  validation.check_lengths(run.model, lengths)
  validation.check_attention(run.model)
  if not run.data.eval_dataset and not 0 < run.data.val_fraction < 1:
    raise ConfigError(
      f"val_fraction={run.data.val_fraction}: with no eval_dataset the tail of the corpus is "
      "held out for validation; use a fraction in (0, 1), e.g. 0.1"
    )
  validation.check_dataset(run.data.dataset, run.data.text_feature, "dataset")
  if run.data.eval_dataset:
    validation.check_dataset(run.data.eval_dataset, run.data.text_feature, "eval_dataset")
  estimate = 0 if run.init_from else validation.vocab_estimate(run.tokenizer)
  if run.model.vocab_size and estimate and run.model.vocab_size < estimate:
    raise ConfigError(
      f"model.vocab_size={run.model.vocab_size} is smaller than tokenizer.vocab_size={estimate}; "
      "set --config.model.vocab_size=0 to size it from the tokenizer"
    )
  mesh = validation.make_mesh(run.mesh)
  build(run, estimate or 256, mesh)  # batch sizes and parameter shapes against the mesh
  if workdir is not None:
    workdir.prepare()


def run_objective_target_len(run: RunConfig) -> int:
  from flaxlm.objectives.text_to_text import span_corruption_lengths, span_corruption_window

  window = span_corruption_window(run.data.seq_len, run.spans)
  return span_corruption_lengths(window, run.spans)[1]


def with_architecture(run: RunConfig, family: str, base) -> RunConfig:
  """`run` on the architecture `base` of a checkpoint it continues from; the run's own
  runtime model keys (dropout, dtype, remat, attention) still apply."""
  runtime = {k: getattr(run.model, k) for k in registry.RUNTIME_KEYS if hasattr(run.model, k)}
  if family != run.model_family or type(run.model) is not type(base):
    runtime = {}
  log.info("init_from=%s: %s model %s", run.init_from, family, dataclasses.asdict(base))
  objective = (
    run.objective
    if run.objective in registry.family_of(family).objectives
    else registry.family_of(family).objective
  )
  model = objectives.with_heads(objective, dataclasses.replace(base, **runtime))
  return dataclasses.replace(run, model_family=family, model=model, objective=objective)


def model_config_json(trainable: Trainable) -> dict:
  return dataclasses.asdict(trainable.model.config)


def check_resume(meta: dict, run: RunConfig, trainable: Trainable | None, directory) -> None:
  """Refuses to resume a checkpoint whose data or architecture this run would reinterpret
  (with `trainable` None, only the data keys: checked before the corpus is read)."""
  if trainable is None:
    return _check_resume_data(meta, run, directory)
  saved_model = {k: v for k, v in meta.get("model", {}).items() if k not in registry.RUNTIME_KEYS}
  model = {k: v for k, v in model_config_json(trainable).items() if k not in registry.RUNTIME_KEYS}
  if saved_model != model or meta.get("model_family", run.model_family) != run.model_family:
    diff = sorted(k for k in set(model) | set(saved_model) if model.get(k) != saved_model.get(k))
    raise CheckpointMismatchError(
      f"the checkpoint in {directory} was trained with model {meta.get('model_family')} "
      f"{ {k: saved_model.get(k) for k in diff} }, but this run builds {run.model_family} "
      f"{ {k: model.get(k) for k in diff} }. Use the original config or a fresh --workdir."
    )


def _check_resume_data(meta: dict, run: RunConfig, directory) -> None:
  if "data_keys" in meta:
    saved = meta["data_keys"]
  elif meta.get("config"):  # checkpoints written before data_keys were recorded
    saved = setting_values(from_saved(meta["config"]), DATA_KEYS)
  else:
    return
  check_same_settings(saved, run, DATA_KEYS, directory, "data settings (resuming would "
                      "reinterpret its data position)")  # fmt: skip


def evaluator(trainable: Trainable, batches: list[dict]):
  """params -> held-out metrics of the objective over a fixed set of global batches."""
  import numpy as np

  def evaluate(params) -> dict:
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
      count = max(float(sums["nsp_count"]), 1.0)
      out["eval_nsp_accuracy"] = float(sums["nsp_correct_sum"]) / count
    return out

  return evaluate


def train(
  run: RunConfig, workdir: str | Workdir, config_json: dict | None = None, after_eval=None
) -> dict:
  """Trains to `run.num_train_steps`, resuming from `workdir` if it holds a checkpoint;
  `after_eval(step, metrics)` returning True ends it there ('pruned').

  Returns the last logged metrics with 'step', 'interrupted', and for reports 'state',
  'trainable', 'tokenizer' and 'eval_example' (one held-out example, numpy)."""
  workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
  if not run.init_from:
    check(run, workdir)
  else:  # the checkpoint decides the architecture (checked below); the rest is checked now
    workdir.prepare()
  lock = WorkdirLock(workdir)
  if jax.process_index() == 0:
    lock.acquire()
  ckpt = Checkpointer(workdir.checkpoints, keep=run.keep_checkpoints, save_every=1)
  try:
    meta = ckpt.restore_meta()
    run, saved_tokenizer, pretrained = _continued(run, meta, workdir)
    if meta:
      check_resume(meta, run, None, ckpt.directory)
    cache = run.corpus_cache or workdir.data  # a prepared copy is shared, never rebuilt
    data = corpus.load_corpus(
      run.data, run.tokenizer, cache, saved_tokenizer, shared=bool(run.corpus_cache)
    )
    objective = run_objective(run, data.tokenizer)
    trainable = build(run, data.tokenizer.vocab_size)
    if meta:
      check_resume(meta, run, trainable, ckpt.directory)
    restored = ckpt.restore(trainable.abstract_state) if meta else None

    batch_sharding = sharding.batch_sharding(trainable.mesh)
    eval_examples = pipeline.eval_batches(
      data.validation, run.data, run.eval_batch_size, run.eval_batches, objective
    )
    eval_set = [sharding.to_global(b, batch_sharding) for b in eval_examples]
    flops = _flops_per_token(run, trainable, objective)
    job = loop.Job(
      trainable=trainable,
      dataset=pipeline.train_dataset(
        data.train,
        run.data,
        run.batch_size,
        objective,
        rows=sharding.host_rows(trainable.mesh, run.batch_size),
      ),  # fmt: skip
      global_batch=run.batch_size,
      data_workers=run.data_workers,
      evaluate=evaluator(trainable, eval_set),
      meta=lambda: {
        "kind": "pretraining",
        "data_keys": setting_values(run, DATA_KEYS),
        "tokenizer": data.tokenizer.to_json(),
        "model": model_config_json(trainable),
        "model_family": run.model_family,
        "objective": run.objective,
        "config": config_json or {},
      },
      initial_state=lambda: trainable.init_state(
        run.seed, transfer.all_params(pretrained) if pretrained else None
      ),
      tokens_per_step=run.batch_size * (run.data.seq_len + objective.target_len),
      flops_per_token=flops,
      after_eval=after_eval,
    )
    result = loop.run(job, run.loop, workdir, ckpt, restored)
  finally:
    ckpt.close()
    lock.release()
  return {
    "step": result.step,
    "interrupted": result.interrupted,
    "pruned": result.pruned,
    **result.metrics,
    "state": result.state,
    "trainable": trainable,
    "tokenizer": data.tokenizer,
    "eval_example": jax.tree.map(lambda x: x[0], eval_examples[0]),  # numpy, for reports
  }


def _continued(run: RunConfig, meta: dict | None, workdir: Workdir):
  """(run, the tokenizer to keep or None, the pretrained weights or None): with init_from,
  the run on the architecture of the checkpoint it continues (checked now); resuming, the
  saved run's tokenizer."""
  saved_tokenizer = tokenizers.tokenizer_from_json(meta["tokenizer"]) if meta else None
  if not run.init_from:
    return run, saved_tokenizer, None
  pretrained = None
  if meta:
    run = with_architecture(
      run, meta["model_family"], registry.model_config(meta["model_family"], meta["model"])
    )
  else:
    pretrained = transfer.load(run.init_from, validation.make_mesh(run.mesh))
    saved_tokenizer = pretrained.tokenizer
    run = with_architecture(run, pretrained.family, pretrained.model_config)
  check(run, workdir)
  return run, saved_tokenizer, pretrained


def _flops_per_token(run: RunConfig, trainable: Trainable, objective) -> reporting.FlopsPerToken:
  """The model's training FLOPs per token (and MaxText's count), logged with its size."""
  config = trainable.model.config
  family = registry.family_of(run.model_family)
  per_token = family.flops_per_token(config, run.data.seq_len, objective.target_len)
  if jax.process_index() == 0:
    n_params = sum(x.size for x in jax.tree.leaves(trainable.abstract_state.params))
    log.info("model %s: %.2fM parameters, %.3g training FLOPs/token, mesh %s", run.model_family,
             n_params / 1e6, per_token, dict(trainable.mesh.shape))  # fmt: skip
  return reporting.FlopsPerToken(per_token, maxtext_flops(run, config))


def _sample_report(run: RunConfig, result: dict) -> str | None:
  from flaxlm.decode.sampling import SamplingConfig, sample_text

  if not run.sample_tokens:
    return None
  text = sample_text(
    result["trainable"],
    result["state"].params,
    result["tokenizer"],
    run.sample_prompt,
    SamplingConfig(run.sample_tokens, temperature=0.8, top_k=40),
    seed=run.seed,
  )
  return "--- sample ---\n" + text + "\n--------------"


def _example_report(run: RunConfig, result: dict) -> str:
  from flaxlm.decode import seq2seq as seq2seq_decoding

  report = seq2seq_decoding.example_report(
    result["trainable"], result["state"].params, result["tokenizer"], result["eval_example"]
  )
  return "--- held-out example ---\n" + report + "\n------------------------"


def _masked_report(run: RunConfig, result: dict) -> str:
  from flaxlm.objectives.masked import fill_masks_report

  report = fill_masks_report(
    result["trainable"], result["state"].params, result["tokenizer"], result["eval_example"]
  )
  return "--- held-out example ---\n" + report + "\n------------------------"


# What a run prints when it ends, as its objective declares (ObjectiveEntry.report).
REPORTS = {"sample": _sample_report, "example": _example_report, "masked": _masked_report}


def end_of_run_report(run: RunConfig, result: dict) -> str | None:
  """A sample (causal LM), or a held-out example with the model's prediction."""
  report = REPORTS.get(objectives.entry(run.objective).report)
  return report(run, result) if report else None
