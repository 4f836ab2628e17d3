"""The bad-input catalogue: each mistake a user can make gets one clear line (a FlaxlmError,
which the entry points print without a traceback) that names the culprit, found before any
data is read where that is possible, and never damages what a workdir already holds.

Most cases run in-process against `pretraining.check` / `pretraining.train`, their configs
read as train.py reads them (`cli.typed_config`); test_cli.py runs a representative handful
through the command line. Fine-tuning's cases are in test_bad_finetune_inputs.py."""

import hashlib
import os
import shutil

import pytest
from samples import files

from flaxlm import cli, errors
from flaxlm.config import default_config, from_config_dict
from flaxlm.errors import FlaxlmError
from flaxlm.pretraining import load as pretrained
from flaxlm.pretraining import run as pretraining
from flaxlm.train.checkpoint import Checkpointer
from flaxlm.workdir import Workdir

# A tiny byte-level GPT on the embedded CPython docs.
BASE = dict(
  seq_len=16, batch_size=8, eval_batch_size=8, eval_batches=1, num_train_steps=2, log_every=1,
  eval_every=0, checkpoint_every=0, sample_tokens=0,
)  # fmt: skip
MODEL = dict(num_layers=1, num_heads=2, embed_dim=32, mlp_dim=64, max_len=32)


def config():
  c = default_config()
  c.update(BASE)
  c.model.update(MODEL)
  c.tokenizer.kind = "byte"
  return c


NL = "\n"


# name -> (config overrides, or a function of tmp_path returning them; text the message names)
CONFIG_CASES = {
  "batch_not_divisible": ({"batch_size": 12}, "batch_size=12 must be divisible by data-parallel size 8"),
  "batch_not_divisible_by_accum": ({"batch_size": 8, "accum_steps": 3}, "accum_steps 3"),
  "eval_batch_not_divisible": ({"eval_batch_size": 10}, "eval_batch_size=10"),
  "mesh_wrong_product": ({"mesh": {"data": 3, "fsdp": 1, "tensor": 1}}, "needs 3 devices but 8"),
  "mesh_two_minus_one": ({"mesh": {"data": -1, "fsdp": -1, "tensor": 1}}, "at most one axis may be -1"),
  "mesh_unknown_axis": ({"mesh": {"data": -1, "pipeline": 2}}, "unknown axes ['pipeline']"),
  "param_not_divisible": (
    {"mesh": {"data": 2, "fsdp": 1, "tensor": 4}, "model.num_heads": 4, "model.num_kv_heads": 2},
    "cannot be split",
  ),
  "unknown_objective": ({"objective": "next_sentence"}, "objective 'next_sentence' is unknown"),
  "family_objective_mismatch": ({"objective": "mlm"}, "objective='mlm' does not train model_family='gpt'"),
  "objective_needs_special_tokens": (
    {"model_family": "bert", "model": MODEL, "objective": "mlm", "tokenizer.kind": "sentencepiece"},
    "needs the tokenizer to reserve ['cls', 'sep', 'mask']",
  ),
  "tokenizer_kind_typo": ({"tokenizer.kind": "sentencepeice"}, "tokenizer.kind='sentencepeice'"),
  "special_tokens_typo": ({"tokenizer.kind": "sentencepiece", "tokenizer.special_tokens": "gpt"}, "special_tokens='gpt'"),
  "schedule_typo": ({"schedule": "cosin"}, "schedule='cosin'"),
  "attention_impl_typo": ({"model.attention_impl": "flash"}, "model.attention_impl='flash'"),
  "cudnn_on_cpu": ({"model.attention_impl": "cudnn"}, "attention_impl='cudnn' needs an NVIDIA GPU"),
  "unknown_dataset_scheme": ({"dataset": "hf:wikitext"}, "config.dataset='hf:wikitext'"),
  "unknown_builtin": ({"dataset": "builtin:wiki"}, "builtin dataset is 'builtin:python-docs'"),
  "unknown_tfds_name": ({"dataset": "tfds:tiny_shakespear"}, "no TFDS dataset 'tiny_shakespear' (similar: tiny_shakespeare"),
  "wrong_text_feature_tfds": ({"dataset": "tfds:tiny_shakespeare", "text_feature": "content"}, "no feature 'content'"),
  "wrong_text_feature_local": (lambda t: {"dataset": "text:" + files(t, "a.txt", "hello"), "text_feature": "body"}, "text_feature='body'"),
  "glob_matches_nothing": (lambda t: {"dataset": f"text:{t}/nothing*.txt"}, "no file matches"),
  "glob_matches_a_directory": (lambda t: {"dataset": f"text:{files(t, 'd/x.txt', 'x') and t / 'd'}"}, "matches only directories"),
  "pairs_one_file": (lambda t: {"dataset": "pairs:" + files(t, "a.en", "a\n"), "model_family": "encdec", "model": MODEL, "objective": "seq2seq"}, "exactly two files"),
  "eval_dataset_missing": ({"eval_dataset": "text:/no/such/file.txt"}, "config.eval_dataset: no file matches"),
  "val_fraction_zero": ({"val_fraction": 0.0}, "val_fraction=0.0"),
  "log_every_zero": ({"log_every": 0}, "log_every=0"),
  "accum_steps_zero": ({"accum_steps": 0}, "accum_steps=0; it must be at least 1"),
  "num_train_steps_zero": ({"num_train_steps": 0}, "num_train_steps=0"),
  "negative_learning_rate": ({"learning_rate": -1e-3}, "learning_rate=-0.001"),
  "keep_checkpoints_zero": ({"keep_checkpoints": 0}, "keep_checkpoints=0 would delete every checkpoint"),
  "vocab_smaller_than_tokenizer": ({"model.vocab_size": 200}, "model.vocab_size=200 is smaller than"),
  "seq_len_over_max_len": ({"seq_len": 64}, "seq_len=64 is longer than model.max_len=32"),
  "target_len_over_max_len": (
    {"model_family": "encdec", "model": {**MODEL, "position": "sinusoidal"}, "objective": "seq2seq", "target_len": 40},
    "target_len=40 is longer than model.max_len=32",
  ),
  "lstm_has_no_pretraining": ({"model_family": "lstm", "model": {}}, "has no pretraining objective"),
  "unknown_config_key": ({"learning_rat": 1e-3}, "unknown config key 'learning_rat'; did you mean learning_rate"),
  "unknown_model_key": ({"model.num_layer": 2}, "keys ['num_layer']"),
  "unknown_family": ({"model_family": "mamba"}, "unknown model family 'mamba'"),
}  # fmt: skip


def run_config(overrides):
  """The RunConfig of BASE + overrides (the dict-valued 'model' and 'mesh' keys replace)."""
  c = config()
  for key, value in overrides.items():
    target, *path = key.split(".")
    if key in ("model", "mesh"):
      import ml_collections

      c[key] = ml_collections.ConfigDict(value)
    elif path:
      c[target].unlock()
      c[target][path[0]] = value
      c[target].lock()
    else:
      c.unlock()
      c[key] = value
      c.lock()
  return cli.typed_config(c, from_config_dict)  # as train.py reads it, in its order


def assert_one_line(error: BaseException, needle: str):
  message = str(error)
  assert isinstance(error, FlaxlmError), f"{type(error).__name__}: {message}"
  assert "\n" not in message, message
  assert needle in message, message


@pytest.mark.parametrize("name", sorted(CONFIG_CASES))
def test_config_mistakes_fail_before_data_with_one_line(name, tmp_path, monkeypatch):
  """Each is caught by reading the config or by pretraining.check (no data read)."""
  overrides, needle = CONFIG_CASES[name]
  if callable(overrides):
    overrides = overrides(tmp_path)
  from flaxlm.data import corpus

  monkeypatch.setattr(corpus, "load_corpus", lambda *a, **k: pytest.fail("data was read"))
  with pytest.raises(Exception) as info:
    pretraining.check(run_config(overrides), None)
  assert_one_line(info.value, needle)


# --- mistakes found when the data is read (before any training step) ------------------------

DATA_CASES = {
  "non_utf8_text": (lambda t: {"dataset": "text:" + files(t, "latin.txt", b"caf\xe9\nna\xefve\n")}, "latin.txt:1 is not UTF-8"),
  "empty_corpus": (lambda t: {"dataset": "text:" + files(t, "empty.txt", "")}, "holds no text"),
  "corpus_too_small": (lambda t: {"dataset": "text:" + files(t, "tiny.txt", "abc")}, "fewer than one sequence of 17"),
  "too_few_eval_sequences": (lambda t: {"eval_dataset": "text:" + files(t, "ev.txt", "x" * 40), "eval_batch_size": 8}, "fewer than one eval batch of 8"),
  "pairs_line_counts_differ": (
    lambda t: {"dataset": f"pairs:{files(t, 'a.en', NL.join('abc') + NL)},{files(t, 'a.de', NL.join('xy') + NL)}", "model_family": "encdec", "model": MODEL, "objective": "seq2seq"},
    "has 3 lines but",
  ),
  "pairs_for_a_text_objective": (lambda t: {"dataset": f"pairs:{files(t, 'b.en', ('a' + NL) * 40)},{files(t, 'b.de', ('x' + NL) * 40)}"}, "trains on plain text"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(DATA_CASES))
def test_data_mistakes_fail_with_one_line(name, tmp_path, tfds_dir):
  overrides, needle = DATA_CASES[name]
  run = run_config({**overrides(tmp_path), "data_dir": tfds_dir})
  with pytest.raises(Exception) as info:
    pretraining.train(run, tmp_path / "workdir")
  assert_one_line(info.value, needle)
  assert not (tmp_path / "workdir" / "checkpoints").exists() or not any(
    (tmp_path / "workdir" / "checkpoints").iterdir()
  )


# --- the workdir ----------------------------------------------------------------------------


def test_workdir_that_is_a_file(tmp_path):
  (tmp_path / "wd").write_text("not a directory")
  with pytest.raises(errors.WorkdirError) as info:
    pretraining.check(run_config({}), Workdir(tmp_path / "wd"))
  assert_one_line(info.value, "is a file")


def test_workdir_that_cannot_be_written(tmp_path):
  with pytest.raises(errors.WorkdirError) as info:  # /proc refuses new entries, even to root
    pretraining.check(run_config({}), Workdir("/proc/flaxlm_workdir"))
  assert_one_line(info.value, "cannot write to --workdir=/proc/flaxlm_workdir")


# --- a workdir that holds a run: refused changes leave it as it was, and it still resumes -----


def digest(directory) -> dict:
  return {
    str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(directory.rglob("*"))
    if p.is_file() and p.name != "metrics.jsonl"
  }


def refused_on_a_copy(source, tmp_path, run, needle: str, error=errors.FlaxlmError):
  """`run(workdir)` on a copy of the trained workdir `source` fails with one line naming
  `needle` and leaves every file but metrics.jsonl as it was: (the copy, the error)."""
  workdir = tmp_path / "workdir"
  shutil.copytree(source, workdir)
  before = digest(workdir)
  with pytest.raises(error) as info:
    run(workdir)
  assert_one_line(info.value, needle)
  assert digest(workdir) == before
  return workdir, info.value


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir with a 2-step run (checkpoint at step 2) and its TFDS cache."""
  base = tmp_path_factory.mktemp("trained")
  tfds = str(base / "tfds")
  pretraining.train(run_config({"data_dir": tfds}), base / "workdir")
  return base / "workdir", tfds


RESUME_CASES = {
  "changed_batch_size": ({"batch_size": 16}, "batch_size (8 -> 16)"),
  "changed_seq_len": ({"seq_len": 8}, "data.seq_len (16 -> 8)"),
  "changed_seed": ({"seed": 3}, "seed (0 -> 3)"),
  "changed_dataset": (lambda t: {"dataset": "text:" + files(t, "other.txt", "other " * 200)}, "data.dataset"),
  "changed_architecture": ({"model": {**MODEL, "num_layers": 2}}, "'num_layers': 1"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(RESUME_CASES))
def test_resume_refuses_changed_settings_and_keeps_the_run(name, trained, tmp_path):
  source, tfds = trained
  overrides, needle = RESUME_CASES[name]
  overrides = overrides(tmp_path) if callable(overrides) else overrides
  run = run_config({**overrides, "data_dir": tfds, "num_train_steps": 3})
  _, error = refused_on_a_copy(source, tmp_path, lambda w: pretraining.train(run, w), needle,
                               errors.CheckpointMismatchError)  # fmt: skip
  assert "fresh --workdir" in str(error)


@pytest.mark.slow
def test_runtime_keys_may_change_on_resume_and_the_run_resumes(trained, tmp_path):
  """dropout, remat policy and attention implementation may differ from the checkpoint's (a
  run moved to another machine); the run resumes from step 2 to 3."""
  source, tfds = trained
  workdir = tmp_path / "workdir"
  shutil.copytree(source, workdir)
  model = {**MODEL, "remat_policy": "full", "attention_impl": "xla", "dropout_rate": 0.1}
  result = pretraining.train(
    run_config({"model": model, "data_dir": tfds, "num_train_steps": 3}), workdir
  )
  assert result["step"] == 3 and not result["interrupted"]


def test_second_run_in_a_live_workdir_is_refused(trained, tmp_path):
  source, tfds = trained
  workdir = tmp_path / "workdir"
  shutil.copytree(source, workdir)
  (workdir / "run.lock").write_text(f'{{"host": "{os.uname().nodename}", "pid": 1, "since": "x"}}')
  with pytest.raises(errors.WorkdirError) as info:
    pretraining.train(run_config({"data_dir": tfds, "num_train_steps": 3}), workdir)
  assert_one_line(info.value, "is in use by another run (pid 1")
  assert (workdir / "run.lock").exists()  # not ours to remove


def test_stale_lock_of_a_dead_process_is_taken_over(trained, tmp_path, caplog):
  source, tfds = trained
  workdir = tmp_path / "workdir"
  shutil.copytree(source, workdir)
  dead = 2**22 + 12345  # above pid_max's default: no such process
  (workdir / "run.lock").write_text(f'{{"host": "{os.uname().nodename}", "pid": {dead}}}')
  run = run_config({"data_dir": tfds, "num_train_steps": 2})  # already done: no step to take
  assert pretraining.train(run, workdir)["step"] == 2
  assert "taking over" in caplog.text and not (workdir / "run.lock").exists()


def test_truncated_newest_checkpoint_falls_back_with_a_warning(trained, tmp_path, caplog):
  """The newest step's files cut short (a copy that died): the run resumes from the step
  before, and the warning names the bad step."""
  source, tfds = trained
  workdir = tmp_path / "workdir"
  shutil.copytree(source, workdir)
  shutil.copytree(workdir / "checkpoints" / "2", workdir / "checkpoints" / "3")
  for f in (workdir / "checkpoints" / "3").rglob("*"):
    if f.is_file() and f.stat().st_size > 64 and "meta" not in str(f):
      f.write_bytes(f.read_bytes()[:10])
  ckpt = Checkpointer(workdir / "checkpoints", create=False)
  trainable = pretraining.build(run_config({}), 259)
  restored = ckpt.restore(trainable.abstract_state)
  ckpt.close()
  assert restored is not None and restored[0] == 2
  assert "/3 could not be read" in caplog.text


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(trained, tmp_path, monkeypatch):
  """A save that fails (a full disk, simulated) stops the run with one line naming the step
  and the intact previous checkpoint, which still restores."""
  import orbax.checkpoint as ocp

  source, tfds = trained
  workdir = tmp_path / "workdir"
  shutil.copytree(source, workdir)

  def no_space(self, step, *args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(ocp.CheckpointManager, "save", no_space)
  with pytest.raises(errors.WorkdirError) as info:
    pretraining.train(run_config({"data_dir": tfds, "num_train_steps": 3}), workdir)
  assert_one_line(info.value, "No space left on device")
  assert "step 2 is intact" in str(info.value)
  monkeypatch.undo()
  ckpt = Checkpointer(workdir / "checkpoints", create=False)
  assert ckpt.latest_step() == 2
  step, state, _ = ckpt.restore(pretraining.build(run_config({}), 259).abstract_state)
  ckpt.close()
  assert step == 2 and int(state.step) == 2


# --- generate.py, in-process ---------------------------------------------------------------


def test_prompt_longer_than_max_len(trained):
  from flaxlm.decode.sampling import SamplingConfig, sample_text

  trainable, params, tokenizer = pretrained.load_trained(trained[0])
  with pytest.raises(errors.DataError) as info:
    sample_text(trainable, params, tokenizer, "x" * 40, SamplingConfig(max_new_tokens=4))
  assert_one_line(info.value, "exceeds the model's max_len=32")


def test_an_objective_brings_its_head():
  """Asking for NSP is asking for its classifier: objective=mlm_nsp on a model block without
  the NSP head turns it on (it used to refuse the run)."""
  bert = {**MODEL, "nsp_head": False}
  run = run_config({"model_family": "bert", "model": bert, "objective": "mlm_nsp",
                    "tokenizer.kind": "sentencepiece", "tokenizer.special_tokens": "bert"})  # fmt: skip
  assert run.model.nsp_head
  pretraining.check(run, None)
  assert not run_config({"model_family": "bert", "model": bert, "objective": "mlm"}).model.nsp_head


def test_catalogue_covers_forty_kinds():
  kinds = len(CONFIG_CASES) + len(DATA_CASES) + len(RESUME_CASES) + 8
  assert kinds >= 40, kinds


def test_init_from_continues_pretraining_from_a_checkpoint(trained, tmp_path, monkeypatch):
  """--config.init_from=<workdir> starts from that run's parameters and tokenizer (its
  architecture wins over the config's model block, whose runtime keys still apply)."""
  import jax
  import numpy as np

  source, tfds = trained
  _, want, tokenizer = pretrained.load_trained(source)
  seen = {}
  real = pretraining.Trainable.init_state

  def spy(self, seed, overrides=None):
    state = real(self, seed, overrides)
    seen["params"] = jax.device_get(state.params)
    return state

  monkeypatch.setattr(pretraining.Trainable, "init_state", spy)
  other_model = {**MODEL, "num_layers": 3, "dropout_rate": 0.0}  # ignored but for dropout
  run = run_config(
    {"init_from": str(source), "model": other_model, "data_dir": tfds, "num_train_steps": 1}
  )
  result = pretraining.train(run, tmp_path / "continued")
  assert result["trainable"].model.config.num_layers == MODEL["num_layers"]
  assert result["tokenizer"].to_json() == tokenizer.to_json()
  jax.tree.map(np.testing.assert_array_equal, seen["params"], jax.device_get(want))
