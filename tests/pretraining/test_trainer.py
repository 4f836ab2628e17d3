"""End-to-end runs of train.py (flaxlm/trainer.py): the loss falls and is logged, resume after
SIGKILL or SIGTERM is exact, two processes train exactly like one, and a diverging run stops
with the last good checkpoint intact.

Every run is a subprocess with a 1-layer byte-level GPT (conftest.Scripts.TINY); runs of one
config share their compiled programs through the persistent XLA cache."""

import math
import re
import shutil
import signal
import time

import jax
import numpy as np
import pytest
from samples import RESUME, by_step, free_port, max_difference, resumed_from, rows

from flaxlm.pretraining.load import load_trained
from flaxlm.train.checkpoint import Checkpointer

pytestmark = pytest.mark.slow

# Learning runs: long enough for the byte-level loss to fall well below uniform.
LEARN = (
  "--config.num_train_steps=40",
  "--config.learning_rate=3e-3",
  "--config.warmup_steps=10",
  "--config.eval_every=20",
  "--config.eval_batches=4",
)
# Resume runs: a checkpoint every 5 steps and an eval every 10; 100 steps (a few seconds) leave
# the SIGKILL test time to kill the run after its step-10 checkpoint.
# train.py with a MetricsWriter that sends this process SIGTERM ({times} times) right after
# writing step {step} (process 1 of a multi-process run calls write too; it writes nothing).
SIGTERM_AT = """
import os, runpy, signal, sys
from flaxlm.train import reporting
write = reporting.MetricsWriter.write
def write_then_sigterm(self, step, values):
  write(self, step, values)
  if step == {step}:
    for _ in range({times}):
      os.kill(os.getpid(), signal.SIGTERM)
reporting.MetricsWriter.write = write_then_sigterm
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


def final_params(workdir):
  _, params, _ = load_trained(str(workdir))
  return jax.device_get(params)


def assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


# --- learning, and one process against two --------------------------------------------------


def start_train(scripts, log_dir, name, *args, **kw):
  """A train.py process writing its stdout and stderr to files (pipes could fill and block it)."""
  out, err = open(log_dir / f"{name}.out", "w"), open(log_dir / f"{name}.err", "w")
  proc = scripts.start("train.py", *args, stdout=out, stderr=err, **kw)
  out.close(), err.close()
  return proc


def output(log_dir, name) -> tuple[str, str]:
  return (log_dir / f"{name}.out").read_text(), (log_dir / f"{name}.err").read_text()


@pytest.fixture(scope="module")
def learn_runs(scripts, tmp_path_factory):
  """The LEARN config on 1 process x 4 devices and on 2 processes x 2 devices (started together)."""
  logs = tmp_path_factory.mktemp("logs")
  one, two = tmp_path_factory.mktemp("one_process"), tmp_path_factory.mktemp("two_processes")
  port = free_port()
  procs = {"one": start_train(scripts, logs, "one", f"--workdir={one}", *LEARN, devices=4)}
  for i in range(2):
    procs[f"two_{i}"] = start_train(
      scripts,
      logs,
      f"two_{i}",
      f"--workdir={two}",
      *LEARN,
      f"--coordinator_address=127.0.0.1:{port}",
      "--num_processes=2",
      f"--process_id={i}",
      devices=2,
    )
  stdout = {}
  for name, proc in procs.items():
    proc.wait(timeout=420)
    stdout[name], err = output(logs, name)
    assert proc.returncode == 0, err[-3000:]
  return {"one": one, "two": two, "stdout": stdout}


def test_loss_falls_and_is_logged(learn_runs):
  """40 steps on the CPython docs take the byte-level eval loss far below uniform, and every
  step is logged with the documented keys; eval keys on eval steps; TensorBoard events exist."""
  workdir = learn_runs["one"]
  logged = rows(workdir)
  assert [r["step"] for r in logged] == list(range(1, 41))
  for r in logged:
    assert {"step", "loss", "loss_avg", "learning_rate", "grad_norm"} <= set(r)
    assert all(math.isfinite(r[k]) for k in ("loss", "learning_rate", "grad_norm"))
    assert ("tokens_per_sec" in r) == (r["step"] > 1)  # step 1 (compilation) is left out
    has_eval = r["step"] in (20, 40)
    for key in ("eval_loss", "eval_accuracy", "eval_perplexity"):
      assert (key in r) == has_eval, (r["step"], key)
  assert all(r["tokens_per_sec"] > 0 for r in logged[1:])

  # Warmup from 0 to the peak at step 11 (the rate of step s is schedule(s - 1)), then decay.
  lr = [r["learning_rate"] for r in logged]
  assert lr[0] == 0.0
  assert lr[10] == pytest.approx(3e-3)
  assert lr[-1] < lr[20] < lr[10]

  uniform = math.log(384)  # 259 byte ids, padded to 384 logits
  assert logged[0]["loss"] == pytest.approx(uniform, abs=0.2)
  evals = [r["eval_loss"] for r in logged if "eval_loss" in r]
  assert evals[-1] < math.log(259) - 1.0, evals
  assert evals[-1] < evals[0]
  assert logged[-1]["eval_perplexity"] == pytest.approx(math.exp(evals[-1]), rel=1e-5)
  assert "final step 40" in learn_runs["stdout"]["one"]

  events = list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert events and all(e.stat().st_size > 0 for e in events)


def test_two_processes_train_like_one(learn_runs, record_property):
  """2 processes x 2 devices over localhost give the losses of 1 process x 4 devices at every
  step (up to float reassociation in the cross-process all-reduce); only process 0 logs."""
  one, two = by_step(learn_runs["one"]), rows(learn_runs["two"])
  assert [r["step"] for r in two] == list(range(1, 41))  # one writer: no duplicate rows
  diff = max(abs(r["loss"] - one[r["step"]]["loss"]) for r in two)
  eval_diff = max(
    abs(r["eval_loss"] - one[r["step"]]["eval_loss"]) for r in two if "eval_loss" in r
  )
  record_property("max_loss_difference", diff)
  print(f"2 processes vs 1: max |loss difference| {diff:.3g}, eval {eval_diff:.3g}")
  for r in two:
    assert r["loss"] == pytest.approx(one[r["step"]]["loss"], rel=2e-5, abs=0)
  assert eval_diff < 2e-5 * 4
  assert "final step 40" in learn_runs["stdout"]["two_0"]
  assert "final step" not in learn_runs["stdout"]["two_1"]  # process 1 prints nothing

  # Both processes wrote their shards of one checkpoint, and it loads on one device.
  params_one, params_two = final_params(learn_runs["one"]), final_params(learn_runs["two"])
  pairs = list(zip(jax.tree.leaves(params_one), jax.tree.leaves(params_two), strict=True))
  params_diff = max(float(np.abs(a - b).max()) for a, b in pairs)
  print(f"2 processes vs 1: max |param difference| after 40 steps {params_diff:.3g}")
  assert params_diff < 1e-4


HOST_TOKENIZER = """
import sys, jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from flaxlm.data import corpus, tokenizers
mine = tokenizers.CharTokenizer.train(["abc" if jax.process_index() == 0 else "xyz!"])
print("chars:" + corpus.same_on_every_host(mine).chars)
"""


@pytest.mark.slow
def test_every_process_uses_process_0s_tokenizer(scripts):
  """Tokenizer training may differ between hosts (WordPiece's is not deterministic), so
  process 0's is broadcast: a process whose own tokenizer differs ends up with process 0's."""
  address = f"127.0.0.1:{free_port()}"
  procs = [
    scripts.start(("-c", HOST_TOKENIZER), address, str(i), tiny=False, devices=1) for i in (0, 1)
  ]
  outs = [p.communicate(timeout=120) for p in procs]
  for p, (out, err) in zip(procs, outs, strict=True):
    assert p.returncode == 0, err[-2000:]
    assert "chars:abc" in out.splitlines()


# --- exact resume ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(scripts, tmp_path_factory):
  """An uninterrupted RESUME run."""
  workdir = tmp_path_factory.mktemp("reference")
  proc = scripts.run("train.py", f"--workdir={workdir}", *RESUME)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def kill_and_resume(scripts, workdir, args: tuple, tiny: bool = True) -> tuple[int, list[dict]]:
  """Starts a RESUME run, SIGKILLs it once its step-10 checkpoint exists, reruns the same
  command; returns (the step it resumed from, the rows logged before the kill)."""
  proc = start_train(scripts, workdir, "killed", f"--workdir={workdir}", *args, tiny=tiny)
  checkpoints = workdir / "checkpoints"
  deadline = time.monotonic() + 300
  while proc.poll() is None and time.monotonic() < deadline:
    done = [int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()]
    if done and max(done) >= 10:
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.01)
  proc.wait(timeout=60)
  _, err = output(workdir, "killed")
  assert proc.returncode == -signal.SIGKILL, (
    f"not killed mid-run (rc {proc.returncode}): {err[-2000:]}"
  )
  before_kill = rows(workdir)
  assert before_kill[-1]["step"] < 100

  again = scripts.run("train.py", f"--workdir={workdir}", *args, tiny=tiny)
  assert again.returncode == 0, again.stderr[-3000:]
  start = resumed_from(again.stderr)
  assert start >= 10 and start % 5 == 0
  assert "final step 100" in again.stdout
  assert sorted(by_step(workdir)) == list(range(1, 101))
  return start, before_kill


def test_resume_after_sigkill_is_exact(scripts, reference, tmp_path, record_property):
  """A run killed with SIGKILL after its step-10 checkpoint resumes from its newest finished
  checkpoint and logs exactly the losses of an uninterrupted run, to the same final params."""
  start, before_kill = kill_and_resume(scripts, tmp_path, RESUME)
  diff = max_difference(rows(tmp_path), by_step(reference))
  record_property("sigkill_resume_max_difference", diff)
  print(f"SIGKILL at step ~{before_kill[-1]['step']}, resumed from {start}: max difference {diff}")
  assert diff <= 1e-6
  assert_same_params(final_params(tmp_path), final_params(reference))


# Small BERT (masked LM, dynamic masks) and T5 (span corruption) runs on the embedded corpus,
# with dropout on: their data draws (masks, spans) and dropout keys must resume exactly too.
SMALL = (
  "--config.model.num_layers=1",
  "--config.model.embed_dim=32",
  "--config.model.num_heads=2",
  "--config.model.mlp_dim=64",
  "--config.model.dropout_rate=0.1",
  "--config.tokenizer.vocab_size=512",
  "--config.seq_len=32",
  "--config.batch_size=8",
  "--config.eval_batches=1",
  "--config.eval_batch_size=8",
  "--config.log_every=1",
)
FAMILIES = {
  "bert": (
    "--config=configs/bert_tiny.py",
    "--config.dataset=builtin:python-docs",
    "--config.eval_dataset=",
    "--config.model.max_len=32",
  ),
  "t5": ("--config=configs/t5_tiny.py",),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_resume_after_sigkill_is_exact_for_encoders(scripts, tmp_path, family):
  args = (*FAMILIES[family], *SMALL, f"--config.data_dir={scripts.data_dir}", *RESUME)
  reference = tmp_path / "reference"
  proc = scripts.run("train.py", f"--workdir={reference}", *args, tiny=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  killed = tmp_path / "killed"
  # The same tokenizer as the reference: BERT's WordPiece training is not deterministic.
  shutil.copytree(reference / "data", killed / "data")
  kill_and_resume(scripts, killed, args, tiny=False)
  assert max_difference(rows(killed), by_step(reference)) <= 1e-6
  if family == "bert":  # masked LM also reports accuracy at the [MASK] slots alone
    evals = [r for r in rows(killed) if "eval_loss" in r]
    assert evals and all(0 <= r["eval_accuracy_at_mask"] <= 1 for r in evals)
  assert_same_params(final_params(killed), final_params(reference))


def test_sigterm_saves_at_once_skips_the_eval_and_resume_is_exact(scripts, reference, tmp_path):
  """SIGTERM while step 9 is being logged stops after step 10, an eval step: step 10 is saved
  without evaluating (a preemption notice leaves seconds), train.py exits with status 0, and
  rerunning finishes exactly like the uninterrupted run."""
  proc = scripts.run(("-c", SIGTERM_AT.format(step=9, times=1)), f"--workdir={tmp_path}", *RESUME)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "received SIGTERM: saved step 10" in proc.stderr
  assert "stopped at step 10" in proc.stdout or "final step 10" in proc.stdout
  assert rows(tmp_path)[-1]["step"] == 10 and "eval_loss" not in rows(tmp_path)[-1]
  ckpt = Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.latest_step() == 10
  assert ckpt.restore_meta()["data_iterator"] == {"next_index": 10}
  ckpt.close()

  again = scripts.run("train.py", f"--workdir={tmp_path}", *RESUME)
  assert again.returncode == 0, again.stderr[-3000:]
  assert resumed_from(again.stderr) == 10
  assert sorted(by_step(tmp_path)) == list(range(1, 101))
  want = by_step(reference)
  stopped = {k: v for k, v in want[10].items() if not k.startswith("eval_")}  # eval skipped
  assert max_difference(rows(tmp_path), {**want, 10: stopped}) <= 1e-6
  assert_same_params(final_params(tmp_path), final_params(reference))


def test_a_second_signal_exits_at_once(scripts, tmp_path):
  proc = scripts.run(("-c", SIGTERM_AT.format(step=3, times=2)), f"--workdir={tmp_path}", *RESUME)
  assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
  assert "saved step" not in proc.stderr


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(scripts, reference, tmp_path):
  """Hosts that see a preemption at different steps must not take different branches: with
  SIGTERM sent to process 1 only, both processes agree on a step (JAX's preemption sync
  point), save it together and exit 0; rerunning both resumes from it and ends like the
  uninterrupted run."""
  port = free_port()
  common = (f"--workdir={tmp_path}", *RESUME, f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2")  # fmt: skip
  procs = [
    start_train(scripts, tmp_path, "p0", *common, "--process_id=0", devices=2),
    scripts.start(("-c", SIGTERM_AT.format(step=12, times=1)), *common, "--process_id=1",
                  devices=2, stdout=open(tmp_path / "p1.out", "w"), stderr=open(tmp_path / "p1.err", "w")),
  ]  # fmt: skip
  for p in procs:
    p.wait(timeout=300)
  errs = [output(tmp_path, f"p{i}")[1] for i in range(2)]
  for p, err in zip(procs, errs, strict=True):
    assert p.returncode == 0, err[-3000:]
  saved = [int(re.search(r"saved step (\d+)", err).group(1)) for err in errs]
  assert saved[0] == saved[1] and 12 < saved[0] < 100, saved
  assert rows(tmp_path)[-1]["step"] == saved[0]

  port = free_port()
  common = (f"--workdir={tmp_path}", *RESUME, f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2")  # fmt: skip
  again = [
    start_train(scripts, tmp_path, f"q{i}", *common, f"--process_id={i}", devices=2)
    for i in range(2)
  ]
  for i, p in enumerate(again):
    p.wait(timeout=300)
    assert p.returncode == 0, output(tmp_path, f"q{i}")[1][-3000:]
  assert resumed_from(output(tmp_path, "q0")[1]) == saved[0]
  want = by_step(reference)
  for r in rows(tmp_path):
    assert r["loss"] == pytest.approx(want[r["step"]]["loss"], rel=2e-5, abs=0)


def test_divergence_stops_at_the_bad_step(scripts, tmp_path):
  """An absurd learning rate makes the loss non-finite: train.py stops with one line naming
  the step and the newest good checkpoint, which holds the step before and restores finite."""
  proc = scripts.run(
    "train.py",
    f"--workdir={tmp_path}",
    "--config.learning_rate=1e30",
    "--config.num_train_steps=50",
    "--config.checkpoint_every=1",
  )
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  last_line = proc.stderr.strip().splitlines()[-1]
  match = re.search(
    r"loss is (nan|inf|-inf) .*at step (\d+).*newest good checkpoint: step (\d+)", last_line
  )
  assert match, last_line
  bad, good = int(match.group(2)), int(match.group(3))
  print(f"divergence: {last_line[:80]}...")
  assert 1 < bad < 50 and good == bad - 1
  assert rows(tmp_path)[-1]["step"] == good  # the bad step is neither logged nor saved
  ckpt = Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.latest_step() == good
  ckpt.close()
  params = final_params(tmp_path)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
