"""Validation loss of a nanoGPT checkpoint on the exact held-out windows flaxlm evaluates.

nanoGPT prints a loss averaged over random validation batches; flaxlm's `eval_loss` covers a
fixed set (`eval_batches` x `eval_batch_size` windows from the start of the held-out split).
This scores nanoGPT's model on flaxlm's set, so the two losses compare like for like.

Needs a nanoGPT checkout (for its `model.py`; nothing of it is copied here), a finished
flaxlm character-level run, and the text both were trained on (nanoGPT's character ids are
the sorted characters of that text, as its `prepare.py` builds them). The checkpoint is
read with `torch.load(weights_only=True)`: tensors and plain values only, no pickled code.

  python bench/score_nanogpt.py --workdir=/tmp/sc --nanogpt_dir=<nanoGPT checkout> \
      --checkpoint=<nanoGPT out_dir>/ckpt.pt --text=../shared/data/tinyshakespeare.txt

Prints one JSON line: the nanoGPT checkpoint's loss and flaxlm's own logged `eval_loss`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flaxlm.config import from_saved  # noqa: E402
from flaxlm.data import corpus, pipeline, tokenizers  # noqa: E402
from flaxlm.pretraining import run as pretraining  # noqa: E402
from flaxlm.train import checkpoint  # noqa: E402


def flaxlm_eval_windows(workdir: str) -> tuple[list[str], list[str], float]:
  """(input texts, target texts, flaxlm's last eval_loss) of the run in `workdir`."""
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), create=False)
  meta = ckpt.restore_meta()
  ckpt.close()
  if meta is None:
    sys.exit(f"score_nanogpt.py: no flaxlm checkpoint in {workdir}; train one with train.py first")
  run = from_saved(meta["config"])
  tokenizer = tokenizers.tokenizer_from_json(meta["tokenizer"])
  data = corpus.load_corpus(run.data, run.tokenizer, os.path.join(workdir, "data"), tokenizer)
  batches = pipeline.eval_batches(
    data.validation,
    run.data,
    run.eval_batch_size,
    run.eval_batches,
    pretraining.run_objective(run, tokenizer),
  )
  inputs = [tokenizer.decode(row) for b in batches for row in b["inputs"]]
  targets = [tokenizer.decode(row) for b in batches for row in b["targets"]]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    evals = [row["eval_loss"] for row in map(json.loads, f) if "eval_loss" in row]
  return inputs, targets, evals[-1]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a finished flaxlm char-level run")
  parser.add_argument("--nanogpt_dir", required=True, help="a nanoGPT checkout (its model.py)")
  parser.add_argument("--checkpoint", required=True, help="nanoGPT's ckpt.pt")
  parser.add_argument("--text", required=True, help="the text both models were trained on")
  parser.add_argument("--batch", type=int, default=48)
  args = parser.parse_args()

  sys.path.insert(0, args.nanogpt_dir)
  from model import GPT, GPTConfig  # nanoGPT's

  saved = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
  model = GPT(GPTConfig(**saved["model_args"]))
  model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in saved["model"].items()})
  model.eval()
  with open(args.text, encoding="utf-8") as f:
    vocab = {ch: i for i, ch in enumerate(sorted(set(f.read())))}

  inputs, targets, flaxlm_loss = flaxlm_eval_windows(args.workdir)
  encode = lambda texts: torch.tensor(np.array([[vocab[ch] for ch in t] for t in texts]))
  x, y = encode(inputs), encode(targets)
  losses = []
  with torch.no_grad():
    for i in range(0, len(x), args.batch):  # equal-length rows: the mean of means is the mean
      _, loss = model(x[i : i + args.batch], y[i : i + args.batch])
      losses.append(float(loss) * len(x[i : i + args.batch]))
  print(
    json.dumps(
      {
        "windows": len(x),
        "characters_scored": int(y.numel()),
        "nanogpt_loss": round(sum(losses) / len(x), 4),
        "flaxlm_eval_loss": round(flaxlm_loss, 4),
        "nanogpt_checkpoint": args.checkpoint,
      }
    )
  )


if __name__ == "__main__":
  main()
