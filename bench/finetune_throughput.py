"""Fine-tuning throughput and accuracy of flaxlm against Hugging Face transformers + PyTorch
on CPU: the all-MiniLM-L6-v2 SST-2 job of ../shared/REFERENCE.md, both sides in one process.

The job: all-MiniLM-L6-v2 imported from its Hugging Face folder, SST-2 train.tsv (duplicates
kept, as the peer reads the file), batch 32, at most 64 tokens, AdamW lr 5e-5 (weight decay
0.01 on weight matrices), 40 warmup steps then linear decay to 0 at `--steps`, gradient norm
clipped at 1.0, dropout 0.1; dev.tsv accuracy at the end.

flaxlm runs its real fine-tuning path: configs/finetune_sst2_minilm.py with the job's
overrides, `init_from='hf:<dir>'` (flaxlm.convert), the classification task's model and loss,
`Trainable.train_step`, the Grain batches of `flaxlm.finetuning.run` and `flaxlm.finetuning.evaluation`
for the dev accuracy. Only the loop's logging and checkpoints are left out. The peer is
`bench/hf_finetune.py` (`BertForSequenceClassification`, eager, SDPA attention; attention
dropout 0.1, which flaxlm does not have).

Fairness: both sides train on the same examples in the same order (flaxlm's shuffle; the
peer's token ids come from transformers' own tokenizer and are checked equal to flaxlm's;
each step's labels are checked equal). By default flaxlm trains padding-free
(`task.padding_free=True`: a step's 32 examples share 64-wide rows, each attending only to
itself; the same loss and gradients as padded rows, `tests/tasks/test_padding_free.py`) and the
peer pads each batch to its longest example, as transformers' DataCollatorWithPadding does.
`flaxlm_tokens_per_step` and `hf_tokens_per_step` say how many token positions each side
computes: the padding-free speed-up is fewer positions, not faster ones. With
`--flaxlm_padding=bucket --hf_padding=bucket` both pad each batch as flaxlm's padded path
does, to its longest example rounded up to 16, 32, 48 or 64 columns (every batch's width is
checked equal): that compares the two at equal work per step. Tokenizing happens before
timing on both sides; collating a batch is timed on both.
Both use every core (torch threads = cores; XLA's CPU thread pool). The models compute the
same function but for dropout: both drop after the embeddings, the attention output and the
MLP output; transformers also drops attention probabilities (flaxlm has no such dropout).
After an untimed warm-up (flaxlm compiles one step per batch shape on a throwaway state; the
peer runs one forward and backward per width without updating), blocks of `--block` steps
alternate flaxlm, peer, flaxlm, ... so the machine's drift hits both alike; examples/s are
total examples over total timed seconds, and `block_ratios` give each block pair's ratio.

Prints one JSON line. Usage:
  python bench/finetune_throughput.py [--steps=400] [--block=25] [--cpu_devices=N]
      [--flaxlm_padding=free|bucket] [--hf_padding=longest|bucket]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

CORES = len(os.sched_getaffinity(0))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.dirname(os.path.abspath(__file__))]

import hf_finetune  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from flaxlm import cli  # noqa: E402
from flaxlm.config.finetuning import from_config_dict  # noqa: E402
from flaxlm.data import pipeline  # noqa: E402
from flaxlm.finetuning import evaluation  # noqa: E402
from flaxlm.finetuning import run as finetuning  # noqa: E402
from flaxlm.models import registry  # noqa: E402
from flaxlm.nn import sharding  # noqa: E402
from flaxlm.pretraining import transfer  # noqa: E402
from flaxlm.tasks import task_class  # noqa: E402
from flaxlm.train import validation  # noqa: E402

MAX_LEN, BATCH, LR, WARMUP = 64, 32, 5e-5, 40


def job_config(steps: int, cpu_devices: int, padding_free: bool):
  """configs/finetune_sst2_minilm.py with the reference job's settings."""
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  import finetune_sst2_minilm

  c = finetune_sst2_minilm.get_config()
  c.train_data = "tsv:" + hf_finetune.SST2 + "train.tsv"
  c.eval_data = "tsv:" + hf_finetune.SST2 + "dev.tsv"
  c.task.max_len, c.batch_size, c.num_epochs, c.num_train_steps = MAX_LEN, BATCH, 0.0, steps
  c.learning_rate, c.warmup_steps, c.schedule, c.min_learning_rate = LR, WARMUP, "linear", 0.0
  c.weight_decay, c.grad_clip_norm, c.b2, c.model.dropout_rate = 0.01, 1.0, 0.999, 0.1
  c.task.dropout_rate, c.drop_duplicates, c.seed = 0.1, False, 0
  c.task.padding_free = padding_free
  if cpu_devices:
    c.cpu_devices = cpu_devices
  return c


class FlaxlmSide:
  """flaxlm's task model, train step and data path, as `finetuning.train` builds them."""

  def __init__(self, ft):
    self.mesh = validation.make_mesh(ft.mesh)
    train_records, dev_records = finetuning.read_records(ft)
    pretrained = transfer.load(ft.init_from, self.mesh)
    cls = task_class(ft.task_name)
    labels = cls.fit_labels(ft.task, ft.columns, train_records)
    family = registry.family_of(pretrained.family)
    model_config = pretrained.model_config
    task = cls(ft.task, ft.columns, family, model_config, pretrained.tokenizer, labels)
    self.train_records = finetuning.clean(task, train_records, ft, "train")
    self.dev_records = finetuning.clean(task, dev_records, ft, "dev")
    self.examples = [e for r in self.train_records for e in task.examples(r)]
    self.trainable = finetuning.build(task, pretrained.family, model_config, ft, self.mesh)
    overrides = transfer.backbone_overrides(
      self.trainable.abstract_state.params, pretrained, task.layout
    )
    self.state = self.trainable.init_state(ft.seed, overrides)
    self.task, self.ft = task, ft
    self.dataset = finetuning.training_rows(
      task, self.examples, ft.batch_size, ft.seed, MAX_LEN, sharding.data_parallel_size(self.mesh)
    )
    self.data = iter(self.dataset.to_iter_dataset())
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    self.warm = self.trainable.init_state(ft.seed + 1, overrides)  # compiled on, then dropped

  def warm_up(self, batches: list[dict]) -> float:
    t0 = time.perf_counter()
    for b in batches:
      self.warm, m = self.trainable.train_step(
        self.warm, sharding.to_global(b, self.batch_sharding)
      )
      jax.block_until_ready(m)
    del self.warm
    return time.perf_counter() - t0

  def run(self, steps: int) -> float:
    for _ in range(steps):
      batch = sharding.to_global(next(self.data), self.batch_sharding)
      self.state, metrics = self.trainable.train_step(self.state, batch)
    return float(jax.block_until_ready(metrics["loss"]))

  def dev_accuracy(self) -> float:
    dev = evaluation.eval_set(self.task, self.dev_records, self.ft.eval_batch_size, MAX_LEN)
    return evaluation.evaluate(self.task, self.trainable, self.state.params, dev)["eval_accuracy"]


class PeerSide:
  """bench/hf_finetune.py on flaxlm's examples in flaxlm's order, tokenized by transformers."""

  def __init__(self, flaxlm: FlaxlmSide, steps: int, padding: str):
    path = flaxlm.ft.init_from[len("hf:") :]
    tokenizer = hf_finetune.AutoTokenizer.from_pretrained(path)
    column = lambda r: r.get("sentence", r.get("content"))
    self.rows = hf_finetune.encode(tokenizer, [column(r) for r in flaxlm.train_records], MAX_LEN)
    self.labels = [int(e["labels"]) for e in flaxlm.examples]
    differ = sum(
      not np.array_equal(r, e["inputs"]) for r, e in zip(self.rows, flaxlm.examples, strict=True)
    )
    if differ:
      raise RuntimeError(f"transformers and flaxlm tokenize {differ} training texts differently")
    # The same permutation per epoch as flaxlm's pipeline: Grain's shuffle of the positions.
    order = pipeline.batches(list(range(len(self.rows))), lambda i, rng: i, BATCH, flaxlm.ft.seed,
                             collate=np.asarray)  # fmt: skip
    self.order = [order[s] for s in range(steps)]
    dev_rows = hf_finetune.encode(tokenizer, [column(r) for r in flaxlm.dev_records], MAX_LEN)
    dev_labels = [flaxlm.task.gold(r) for r in flaxlm.dev_records]
    self.dev = [
      hf_finetune.collate(dev_rows[i : i + 64], dev_labels[i : i + 64], MAX_LEN)
      for i in range(0, len(dev_rows), 64)
    ]
    self.tuner = hf_finetune.Finetuner(path, len(flaxlm.task.labels), LR, WARMUP, steps)
    self.step, self.padding = 0, padding

  def batch(self, step: int) -> dict:
    picked = self.order[step]
    return hf_finetune.collate(
      [self.rows[i] for i in picked], [self.labels[i] for i in picked], MAX_LEN, self.padding
    )

  def warm_up(self, steps: list[int]) -> float:
    t0 = time.perf_counter()
    for step in steps:
      self.tuner.model(**self.batch(step)).loss.backward()
      self.tuner.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0

  def run(self, steps: int) -> float:
    for _ in range(steps):
      loss = self.tuner.step(self.batch(self.step))
      self.step += 1
    return loss


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=400, help="training steps per side")
  parser.add_argument("--block", type=int, default=25, help="steps per timing block")
  parser.add_argument(
    "--cpu_devices", type=int, default=0, help="flaxlm's XLA CPU devices (0: the config's)"
  )
  parser.add_argument(
    "--flaxlm_padding", choices=["free", "bucket"], default="free",
    help="flaxlm's batches: padding-free rows, or one padded row per example",
  )  # fmt: skip
  parser.add_argument(
    "--hf_padding", choices=["longest", "bucket"], default="longest",
    help="the peer's padding: each batch's longest example, or flaxlm's buckets",
  )  # fmt: skip
  args = parser.parse_args()
  if args.steps % args.block:
    parser.error("--steps must be a multiple of --block")
  c = job_config(args.steps, args.cpu_devices, args.flaxlm_padding == "free")
  ft = from_config_dict(c)
  devices = cli.use_cpu_devices(ft.cpu_devices, (ft.batch_size, ft.eval_batch_size))
  torch.set_num_threads(CORES)

  flaxlm = FlaxlmSide(ft)
  peer = PeerSide(flaxlm, args.steps, args.hf_padding)
  # Every step's batch on both sides, made once for the checks (timed runs make their own).
  flaxlm_batches = [flaxlm.dataset[s] for s in range(args.steps)]
  hf_batches = [peer.batch(s) for s in range(args.steps)]
  flaxlm_shapes = [b["inputs"].shape for b in flaxlm_batches]
  hf_widths = [b["input_ids"].shape[1] for b in hf_batches]
  for s, (ours, theirs) in enumerate(zip(flaxlm_batches, hf_batches, strict=True)):
    if not np.array_equal(ours["labels"], theirs["labels"].numpy()):
      raise RuntimeError(f"the two sides train on different examples at step {s}")
  if args.flaxlm_padding == args.hf_padding == "bucket":
    if [w for _, w in flaxlm_shapes] != hf_widths:
      raise RuntimeError("the two sides pad batches to different widths")
    if not np.array_equal(flaxlm_batches[0]["inputs"], hf_batches[0]["input_ids"]):
      raise RuntimeError("the two sides' first batches differ")
  # One batch of each shape among the steps to run (flaxlm compiles once per shape).
  first_of = {shape: flaxlm_shapes.index(shape) for shape in sorted(set(flaxlm_shapes))}
  compile_seconds = flaxlm.warm_up([flaxlm_batches[s] for s in first_of.values()])
  del flaxlm_batches, hf_batches
  peer_warm_seconds = peer.warm_up([hf_widths.index(w) for w in sorted(set(hf_widths))])

  times = {"flaxlm": [], "hf": []}
  losses = {}
  for _ in range(args.steps // args.block):
    for name, side in (("flaxlm", flaxlm), ("hf", peer)):
      t0 = time.perf_counter()
      losses[name] = side.run(args.block)
      times[name].append(time.perf_counter() - t0)

  examples = args.steps * BATCH
  eps = {name: examples / sum(t) for name, t in times.items()}
  print(
    json.dumps(
      {
        "flaxlm_examples_per_sec": round(eps["flaxlm"], 2),
        "hf_examples_per_sec": round(eps["hf"], 2),
        "ratio": round(eps["flaxlm"] / eps["hf"], 3),
        "flaxlm_dev_accuracy": round(flaxlm.dev_accuracy(), 4),
        "hf_dev_accuracy": round(peer.tuner.accuracy(peer.dev), 4),
        "steps": args.steps,
        "batch": BATCH,
        "max_len": MAX_LEN,
        "flaxlm_padding": args.flaxlm_padding,
        "hf_padding": args.hf_padding,
        "flaxlm_tokens_per_step": round(float(np.mean([r * w for r, w in flaxlm_shapes])), 1),
        "hf_tokens_per_step": round(BATCH * float(np.mean(hf_widths)), 1),
        "flaxlm_batch_shapes": len(first_of),
        "flaxlm_train_seconds": round(sum(times["flaxlm"]), 1),
        "hf_train_seconds": round(sum(times["hf"]), 1),
        "block_ratios": [
          round(h / f, 3) for f, h in zip(times["flaxlm"], times["hf"], strict=True)
        ],
        "median_block_ratio": round(
          statistics.median(h / f for f, h in zip(times["flaxlm"], times["hf"], strict=True)), 3
        ),
        "flaxlm_compile_seconds": round(compile_seconds, 1),
        "hf_warmup_seconds": round(peer_warm_seconds, 1),
        "flaxlm_last_loss": round(losses["flaxlm"], 4),
        "hf_last_loss": round(losses["hf"], 4),
        "threads": CORES,
        "flaxlm_cpu_devices": devices,
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "jax": jax.__version__,
        "torch": torch.__version__,
      }
    )
  )


if __name__ == "__main__":
  main()
