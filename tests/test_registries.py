"""Registries that hold: a model family and a task added from outside the package
(tests/toy_plugins.py: one module, one registry call each) pretrain and fine-tune end to end
through train.py and finetune.py, with no flaxlm file touched."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

PRETRAIN = """
import ml_collections
import toy_plugins
from flaxlm.config import default_config

def get_config():
  c = default_config()
  c.model_family = "toy"
  c.model = ml_collections.ConfigDict(dict(embed_dim=16, max_len=32))
  c.tokenizer.kind = "byte"
  c.update(seq_len=16, batch_size=8, eval_batch_size=8, eval_batches=1, num_train_steps=3,
           log_every=1, eval_every=3, checkpoint_every=3, sample_tokens=0)  # no KV cache
  return c
"""

FINETUNE = """
import toy_plugins
from flaxlm.config.finetuning import finetune_config, task_block

def get_config():
  c = finetune_config()
  c.init_from = {init_from!r}
  c.task = task_block("match")
  c.train_data = c.eval_data = {data!r}
  c.columns.right = "second"  # the task's own column, remapped like any other
  c.update(batch_size=8, eval_batch_size=8, num_train_steps=4, eval_every=2, checkpoint_every=2,
           learning_rate=1e-2, warmup_steps=0, log_every=1)
  return c
"""


@pytest.mark.slow  # two entry-point processes
def test_a_family_and_a_task_from_outside_train_end_to_end(tmp_path, scripts):
  rows = [{"left": "red apple", "second": "an apple", "label": 1},
          {"left": "blue sky", "second": "green sea", "label": 0}] * 8  # fmt: skip
  data = tmp_path / "pairs.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in rows))
  (tmp_path / "toy_lm.py").write_text(PRETRAIN)
  init_from = str(tmp_path / "toy_lm")
  (tmp_path / "toy_match.py").write_text(FINETUNE.format(init_from=init_from, data=f"jsonl:{data}"))
  env = {**scripts.env(1), "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
  run = lambda *args: subprocess.run([sys.executable, *args[1:]] if args[0] == "python" else args, cwd=REPO, env=env, capture_output=True, text=True,
                                     timeout=300)  # fmt: skip

  pre = run("python", "train.py", f"--config={tmp_path / 'toy_lm.py'}", f"--workdir={init_from}",
            f"--config.data_dir={scripts.data_dir}")  # fmt: skip
  assert pre.returncode == 0, pre.stderr[-3000:]
  steps = [json.loads(ln) for ln in open(tmp_path / "toy_lm" / "metrics.jsonl")]
  assert steps[-1]["step"] == 3 and "eval_loss" in steps[-1]

  ft = run("python", "finetune.py", f"--config={tmp_path / 'toy_match.py'}",
           f"--workdir={tmp_path / 'match'}")  # fmt: skip
  assert ft.returncode == 0, ft.stderr[-3000:]
  result = json.loads(ft.stdout.strip().splitlines()[-1])
  assert 0.0 <= result["eval_accuracy"] <= 1.0 and result["best"]["step"] in (2, 4)
