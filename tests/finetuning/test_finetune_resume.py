"""finetune.py as a user runs it: a run killed with SIGKILL resumes from its newest checkpoint
and logs exactly what an uninterrupted run logs, for every task kind; `--mode=evaluate`
prints the numbers training ended with."""

import json
import signal
import time

import pytest
from conftest import Finished
from samples import by_step, files, good_bad_data, max_difference, padding_free_bert, pairs, rows

pytestmark = pytest.mark.slow

STEPS = ("--config.num_train_steps=40", "--config.checkpoint_every=5", "--config.log_every=1",
         "--config.eval_every=20", "--config.batch_size=8", "--config.eval_batch_size=8")  # fmt: skip


# A BiLSTM config for a task that no shipped LSTM config has (a config's task block holds
# that task's keys, so --config.task.name cannot switch a block to another task).
LSTM_CONFIG = """
from flaxlm.config.finetuning import finetune_config, task_block, with_model_preset

def get_config():
  c = finetune_config()
  with_model_preset(c, "lstm", "bilstm")
  c.tokenizer.kind = "word"
  c.task = task_block({task!r})
  return c
"""


def lstm_args(tmp, task: str = "") -> list[str]:
  config = "--config=configs/finetune_sst2_lstm.py"
  if task:
    config = "--config=" + files(tmp, f"{task}_lstm.py", LSTM_CONFIG.format(task=task))
  return [config, "--config.model.embed_dim=16", "--config.model.hidden_dim=16",
          "--config.num_epochs=0", "--config.model.dropout_rate=0.1"]  # fmt: skip


def task_args(tmp, task: str) -> list[str]:
  """A tiny model and generated data for each task kind."""
  if task == "classification":
    return [*lstm_args(tmp), *good_bad_data(tmp)]
  if task in ("padding_free", "lora"):
    args = padding_free_bert(tmp)
    if task == "lora":  # QLoRA: the BERT frozen in int8, adapters on q and v, the head trained
      args += ["--config.lora.rank=4", "--config.lora.alpha=8", "--config.lora.quantize_base=int8"]
    return args
  lstm = lstm_args(tmp, task)
  if task == "token_classification":
    text = "".join(f"Anna{i} B-PER\nsaw O\nBerlin B-LOC\n\n" for i in range(64))
    data = "conll:" + files(tmp, "n.txt", text)
    return [*lstm, f"--config.train_data={data}",
            f"--config.eval_data={data}", "--config.drop_duplicates=false"]  # fmt: skip
  if task == "qa":
    context = "The bridge was built in 1893 and carries the market road."
    qa = [{"id": str(i), "question": f"when was it built {i}", "context": context,
           "answers": [{"text": "1893", "answer_start": context.index("1893")}]} for i in range(64)]  # fmt: skip
    jsonl = json.dumps({"data": [{"paragraphs": [{"context": context, "qas": qa}]}]})
    data = "squad:" + files(tmp, "q.json", jsonl)
    return [*lstm, "--config.task.max_len=48", "--config.task.doc_stride=16",
            "--config.task.max_question_len=8", f"--config.train_data={data}", f"--config.eval_data={data}"]  # fmt: skip
  rows_ = "".join(json.dumps(p) + "\n" for p in pairs(64, 0))
  data = "jsonl:" + files(tmp, "s.jsonl", rows_)
  common = [f"--config.train_data={data}", f"--config.eval_data={data}", "--config.max_eval_examples=8",
            "--config.task.target_len=12", "--config.task.generate_in_eval=false"]  # fmt: skip
  if task == "seq2seq":
    return ["--config=configs/finetune_dialogsum.py", "--config.model.num_layers=1", "--config.model.embed_dim=32",
            "--config.model.mlp_dim=64", "--config.model.num_heads=2", "--config.tokenizer.vocab_size=300",
            "--config.task.max_len=32", "--config.task.beam_size=2", "--config.columns.text=source",
            "--config.columns.target=target", *common]  # fmt: skip
  return ["--config=configs/finetune_dialogsum_sft.py", "--config.init_from=", "--config.model_family=gpt",
          *[f"--config.model.{k}" for k in ("dropout_rate=0.1",)], "--config.tokenizer.kind=byte",
          "--config.task.max_len=64", "--config.task.template={prompt} =>", "--config.columns.prompt=source",
          "--config.columns.response=target", *common]  # fmt: skip


TASKS = ["classification", "padding_free", "lora", "token_classification", "qa", "seq2seq", "sft"]


@pytest.mark.parametrize("task", TASKS)
def test_finetune_resume_after_sigkill_is_exact(task, scripts, tmp_path):
  args = [*task_args(tmp_path, task), *STEPS]
  reference = tmp_path / "reference"
  # The uninterrupted run and the one to kill run side by side (one core each).
  ref_out, ref_err = open(tmp_path / "reference.out", "w+"), open(tmp_path / "reference.err", "w+")
  ref = scripts.start("finetune.py", f"--workdir={reference}", *args, tiny=False,
                      stdout=ref_out, stderr=ref_err)  # fmt: skip
  workdir = tmp_path / "killed"
  err = open(tmp_path / "killed.err", "w")
  proc = scripts.start(
    "finetune.py", f"--workdir={workdir}", *args, tiny=False, stderr=err, stdout=err
  )
  deadline = time.monotonic() + 300
  while proc.poll() is None and time.monotonic() < deadline:
    steps = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
    if steps and max(steps) >= 10:
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.01)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.err").read_text()[-2000:]
  ref.wait(timeout=600)
  ref_out.seek(0), ref_err.seek(0)
  done = Finished(ref.returncode, ref_out.read(), ref_err.read())
  assert done.returncode == 0, done.stderr[-3000:]
  again = scripts.run("finetune.py", f"--workdir={workdir}", *args, tiny=False, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resumed from step" in again.stderr
  assert sorted(by_step(workdir)) == list(range(1, 41))
  assert max_difference(rows(workdir), by_step(reference)) <= 1e-6
  final = json.loads(again.stdout.strip().splitlines()[-1])
  want = json.loads(done.stdout.strip().splitlines()[-1])
  for key, value in want.items():
    if isinstance(value, float):
      assert final[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

  if task == "classification":  # --mode=evaluate prints what training ended with
    data = next(a.split("=", 1)[1] for a in args if a.startswith("--config.eval_data="))
    ev = scripts.run(
      "finetune.py", f"--workdir={workdir}", "--mode=evaluate", f"--eval_data={data}", tiny=False
    )
    assert ev.returncode == 0, ev.stderr[-2000:]
    printed = json.loads(ev.stdout.strip().splitlines()[-1])
    for key in ("eval_accuracy", "eval_loss", "eval_f1_macro"):
      assert printed[key] == pytest.approx(want[key], rel=1e-6), key
