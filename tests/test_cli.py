"""train.py and generate.py as a user runs them: mistakes fail with one clear line, not a
traceback, and never damage what a workdir already holds."""

import dataclasses
import hashlib
import re

import pytest

from flaxlm import cli
from flaxlm.train.checkpoint import Checkpointer

# ~2 minutes of subprocesses (each imports JAX): CI runs them; the default suite stays < 15 min.
pytestmark = pytest.mark.slow


@dataclasses.dataclass
class Result:
  returncode: int
  stdout: str
  stderr: str


# name -> (script, arguments, with the tiny run flags). `{d}` is a fresh directory per command.
COMMANDS = {
  "override_default": ("train.py", ["--workdir={d}", "--config.learning_rat=1e-3"], False),
  "override_given": (
    "train.py",
    ["--config=configs/gpt_tiny.py", "--workdir={d}", "--config.learning_rat=1e-3"],
    False,
  ),
  "bad_value": ("train.py", ["--workdir={d}", "--config.num_train_steps=many"], True),
  "missing_config": ("train.py", ["--config=configs/no_such.py", "--workdir={d}"], False),
  "missing_workdir": ("train.py", [], True),
  "missing_text": ("train.py", ["--workdir={d}", "--config.dataset=text:/nonexistent/*.txt"], True),
  "train_2_steps": ("train.py", ["--workdir={d}", "--config.num_train_steps=2"], True),
  "bad_cpu_devices": ("train.py", ["--workdir={d}", "--config.cpu_devices=0"], True),
  "generate_empty": ("generate.py", ["--workdir={d}"], False),
  "generate_missing": ("generate.py", ["--workdir={d}/typo"], False),
  "help": ("train.py", ["--help"], False),
  "unparsable_config": ("train.py", ["--config={d}/broken.py", "--workdir={d}/run"], False),
  "non_utf8_text": (
    "train.py",
    ["--workdir={d}/run", "--config.dataset=text:{d}/latin1.txt"],
    True,
  ),
  "finetune_missing_column": (
    "finetune.py",
    [
      "--config=configs/finetune_sst2_lstm.py",
      "--workdir={d}/run",
      "--config.train_data=tsv:{d}/train.tsv",
      "--config.eval_data=tsv:{d}/train.tsv",
      "--config.columns.text=review",
    ],
    False,
  ),
  "finetune_without_eval_data": ("finetune.py", ["--workdir={d}", "--mode=evaluate"], False),
}
# The fine-tuning mistakes issue 30 found (and the foundation issue's accum_steps=0): each is
# one line before any training step, through finetune.py's own order of validation.
FINETUNE = ["--config=configs/finetune_sst2_lstm.py", "--workdir={d}/run",
            "--config.train_data=tsv:{d}/train.tsv", "--config.eval_data=tsv:{d}/train.tsv"]  # fmt: skip
FINETUNE_MISTAKES = {
  "finetune_unknown_metric": (["--config.early_stopping.metric=bleu"], "early_stopping.metric='bleu'", "eval_accuracy"),
  "finetune_max_len_zero": (["--config.task.max_len=0"], "task.max_len=0 must be at least 1"),
  "finetune_accum_steps_zero": (["--config.accum_steps=0"], "accum_steps=0; it must be at least 1"),
  "finetune_conll_one_column": (
    ["--config=configs/finetune_conll2003_lstm.py", "--config.train_data=conll:{d}/one.conll", "--config.eval_data=conll:{d}/one.conll"],
    "one.conll:3 has 1 column ('Lonely')",
  ),
}  # fmt: skip
for _name, (_args, *_) in FINETUNE_MISTAKES.items():  # a case's own --config comes first
  _config = [a for a in _args if a.startswith("--config=")] or FINETUNE[:1]
  _rest = [a for a in _args if not a.startswith("--config=")]
  COMMANDS[_name] = ("finetune.py", _config + FINETUNE[1:] + _rest, False)

# Files some commands read, written into their directory before they start.
INPUTS = {
  "unparsable_config": {"broken.py": "def get_config(:\n  pass\n"},
  "non_utf8_text": {"latin1.txt": b"caf\xe9 cr\xe8me\n" * 50},
  "finetune_missing_column": {"train.tsv": "label\ttext\n1\tgood\n0\tbad\n"},
  **{name: {"train.tsv": "label\ttext\n1\tgood\n0\tbad\n"} for name in FINETUNE_MISTAKES},
}
INPUTS["finetune_conll_one_column"]["one.conll"] = "EU B-ORG\nrejects O\nLonely\n\n"


@pytest.fixture(scope="module")
def runs(scripts, tmp_path_factory) -> dict:
  """Every command above, started at once (each spends seconds importing JAX; the cores
  overlap that): name -> (Result, its directory)."""
  procs = {}
  for name, (script, args, tiny) in COMMANDS.items():
    d = tmp_path_factory.mktemp(name)
    for file, content in INPUTS.get(name, {}).items():
      (d / file).write_bytes(content if isinstance(content, bytes) else content.encode())
    out, err = open(d.parent / f"{name}.out", "w+"), open(d.parent / f"{name}.err", "w+")
    args = [a.format(d=d) for a in args]
    procs[name] = (scripts.start(script, *args, tiny=tiny, stdout=out, stderr=err), out, err, d)
  results = {}
  for name, (proc, out, err, d) in procs.items():
    proc.wait(timeout=300)
    out.seek(0), err.seek(0)
    results[name] = (Result(proc.returncode, out.read(), err.read()), d)
    out.close(), err.close()
  return results


# A log line in cli.setup_logging's format ("12:00:00 flaxlm: ...") or Python's default.
LOG_RECORD = re.compile(r"^(\d\d:\d\d:\d\d \S+|WARNING:\S+):")


def error_lines(proc) -> list[str]:
  """The non-empty stderr lines of a failed run, log records aside."""
  assert proc.returncode not in (0, None), proc.stderr
  return [ln for ln in proc.stderr.splitlines() if ln.strip() and not LOG_RECORD.match(ln)]


def assert_one_line(proc, *needles: str) -> str:
  lines = error_lines(proc)
  assert "Traceback" not in proc.stderr, proc.stderr
  assert len(lines) == 1, proc.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


@pytest.mark.parametrize("name", ["override_default", "override_given"])
def test_unknown_override_suggests_the_key(runs, name):
  """A misspelt --config.x fails with one line naming the closest key, with or without --config."""
  proc, workdir = runs[name]
  assert_one_line(proc, "bad config override", '"learning_rate"', "--config.learning_rat")
  assert list(workdir.iterdir()) == []


def test_bad_override_value(runs):
  """A value of the wrong type names the flag and the problem."""
  proc, _ = runs["bad_value"]
  lines = error_lines(proc)
  assert "Traceback" not in proc.stderr
  assert any("--config.num_train_steps=many" in ln for ln in lines), proc.stderr


def test_missing_config_file(runs):
  """A config path that does not exist fails with one line naming it and where configs live."""
  assert_one_line(runs["missing_config"][0], "configs/no_such.py", "configs/")


def test_missing_workdir(runs):
  """Without --workdir, train.py says that it is required and what goes there."""
  assert_one_line(runs["missing_workdir"][0], "--workdir is required")


def test_missing_text_dataset_names_the_path(runs):
  """--config.dataset=text:<glob> matching nothing fails naming the glob; nothing is trained."""
  proc, workdir = runs["missing_text"]
  lines = error_lines(proc)
  assert "Traceback" not in proc.stderr, proc.stderr
  assert "/nonexistent/*.txt" in lines[-1] and "no file matches" in lines[-1]
  assert not (workdir / "metrics.jsonl").exists()


def digest(directory) -> dict:
  return {
    str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(directory.rglob("*"))
    if p.is_file()
  }


def test_checkpoint_from_another_model_is_refused_and_kept(runs, scripts):
  """Rerunning a workdir with a different model fails naming both models and leaves the
  checkpoint, metrics and data cache as they were."""
  first, workdir = runs["train_2_steps"]
  assert first.returncode == 0, first.stderr
  assert "final step 2" in first.stdout
  before = digest(workdir)
  assert any(name.startswith("checkpoints/2/") for name in before)

  proc = scripts.run(
    "train.py", f"--workdir={workdir}", "--config.num_train_steps=2", "--config.model.num_layers=3"
  )
  line = assert_one_line(proc, "fresh --workdir", "'num_layers': 1", "'num_layers': 3")
  assert str(workdir / "checkpoints") in line
  assert digest(workdir) == before

  ckpt = Checkpointer(str(workdir / "checkpoints"))
  assert ckpt.latest_step() == 2
  assert ckpt.restore_meta()["model"]["num_layers"] == 1
  ckpt.close()


def test_generate_on_empty_workdir(runs):
  """generate.py on a workdir without checkpoints says so and how to train one."""
  proc, workdir = runs["generate_empty"]
  assert_one_line(proc, "no checkpoint in", str(workdir), "python train.py")


def test_generate_on_missing_workdir_creates_nothing(runs):
  """A mistyped --workdir fails clearly and is not created as a side effect."""
  proc, workdir = runs["generate_missing"]
  assert_one_line(proc, "no checkpoint in", str(workdir / "typo"))
  assert not (workdir / "typo").exists()


def test_help_lists_the_flags(runs):
  """--help prints the usage docstring and train.py's flags (the error lines point users to it)."""
  proc, _ = runs["help"]
  assert "python train.py --config=configs/" in proc.stdout
  assert "--workdir" in proc.stdout
  assert "Traceback" not in proc.stderr


def test_bad_cpu_devices(runs):
  assert_one_line(runs["bad_cpu_devices"][0], "cpu_devices=0", "-1 for one per core")


def test_cpu_device_count():
  assert cli.cpu_device_count(1, cores=8) == 1
  assert cli.cpu_device_count(3, cores=2) == 3  # an explicit count is taken as given
  assert cli.cpu_device_count(-1, cores=2, batch_sizes=(12, 12)) == 2
  assert cli.cpu_device_count(-1, cores=8, batch_sizes=(12, 32)) == 4  # divides both batches
  assert cli.cpu_device_count(-1, cores=16, batch_sizes=(7,)) == 7
  assert cli.cpu_device_count(-1, cores=4, batch_sizes=(9,)) == 3


@pytest.mark.slow
def test_cpu_devices_split_the_host_into_a_data_parallel_mesh(scripts, tmp_path):
  """config.cpu_devices=2 on a host with no forced device count trains on a 2-device mesh."""
  proc = scripts.run(
    "train.py",
    f"--workdir={tmp_path}",
    "--config.num_train_steps=2",
    "--config.cpu_devices=2",
    devices=None,
  )
  assert proc.returncode == 0, proc.stderr
  assert "mesh {'data': 2, 'fsdp': 1, 'tensor': 1}" in proc.stderr, proc.stderr


def test_config_file_that_does_not_parse(runs):
  proc, workdir = runs["unparsable_config"]
  assert_one_line(proc, "broken.py")
  assert not (workdir / "run").exists()


def test_non_utf8_text_names_file_and_line(runs):
  proc, _ = runs["non_utf8_text"]
  assert_one_line(proc, "latin1.txt:1 is not UTF-8", "iconv")


def test_finetune_missing_column_names_file_line_and_key(runs):
  proc, _ = runs["finetune_missing_column"]
  assert_one_line(proc, "train.tsv:2 has no column 'review'", "--config.columns.text")


def test_finetune_evaluate_needs_eval_data(runs):
  assert_one_line(runs["finetune_without_eval_data"][0], "--mode=evaluate needs --eval_data")


@pytest.mark.parametrize("name", sorted(FINETUNE_MISTAKES))
def test_finetune_mistakes_are_one_line_before_training(runs, name):
  proc, d = runs[name]
  assert_one_line(proc, *FINETUNE_MISTAKES[name][1:])
  assert not (d / "run" / "checkpoints").exists() or not any((d / "run" / "checkpoints").iterdir())
