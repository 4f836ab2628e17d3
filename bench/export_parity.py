"""Export proof for flaxlm-pretrained models: each workdir (GPT, BERT or T5) is exported with
`python -m flaxlm.convert export`, reloaded in transformers (PyTorch, CPU) and run on a few
real sentences beside flaxlm; prints one JSON line per workdir with the max |logit
difference| over every real token and vocabulary entry.

  python bench/export_parity.py <workdir> [<workdir> ...] [--out_dir=DIR] [--text_file=FILE]

What each side computes (float32, no dropout, one sentence at a time so no padding enters):
  gpt      the sentence's tokens -> next-token logits (B, T, V) (GPT2LMHeadModel /
           LlamaForCausalLM).
  bert     [CLS] sentence [SEP] -> masked-LM logits at every position (BertForMaskedLM, or
           BertForPreTraining: its next-sentence logits are compared too).
  encdec   the sentence + EOS into the encoder, and [start] + the sentence as decoder input
           -> decoder logits (T5ForConditionalGeneration).
Also checked: transformers loads the folder with no missing or unexpected weights, and the
exported tokenizer (AutoTokenizer) gives flaxlm's token ids (`same_token_ids`). Default
sentences: the first few of the CPython reference documentation that ships with Python
(pydoc_data.topics, what configs/gpt_tiny.py and configs/t5_tiny.py train on); --text_file
takes one per line instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from flaxlm.models import registry  # noqa: E402
from flaxlm.objectives.text_to_text import seq2seq_ids  # noqa: E402
from flaxlm.pretraining import load as pretrained  # noqa: E402

MAX_TOKENS = 64  # per sentence (and at most the model's max_len)


def default_sentences(n: int = 4) -> list[str]:
  """The first `n` sentences of 40 to 200 characters in pydoc_data.topics['assert'] onwards."""
  from pydoc_data.topics import topics

  text = " ".join(topics[k] for k in sorted(topics))
  sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
  return [s for s in sentences if 40 <= len(s) <= 200][:n]


def export(workdir: str, out: str) -> None:
  cmd = [sys.executable, "-m", "flaxlm.convert", "export", workdir, out]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")


def load_hf(out: str):
  """The exported model in transformers, and the weights it had to initialize or ignore."""
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    class_name = json.load(f)["architectures"][0]
  model, info = getattr(transformers, class_name).from_pretrained(out, output_loading_info=True)
  bad = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
  return model.eval(), class_name, bad


def inputs(family: str, tokenizer, text: str, max_len: int) -> dict:
  """Token ids (numpy, batch of 1) for each side, as the module docstring says."""
  ids = tokenizer.encode(text)[: max_len - 2]
  special = tokenizer.special_ids
  if family == "bert":
    return {"tokens": np.asarray([[special["cls"], *ids, special["sep"]]], np.int32)}
  if family == "encdec":
    start, eos, _ = seq2seq_ids(tokenizer, "span_corruption")
    return {
      "tokens": np.asarray([[*ids, eos]], np.int32),
      "decoder": np.asarray([[start, *ids]], np.int32),
    }
  return {"tokens": np.asarray([ids], np.int32)}


def logits_pair(family: str, model, params, hf, x: dict) -> list[tuple[np.ndarray, np.ndarray]]:
  """[(flaxlm logits, transformers logits)] for one sentence."""
  t = torch.from_numpy(x["tokens"].astype(np.int64))
  with torch.no_grad():
    if family == "bert":
      ids = x["tokens"]
      out = model.apply({"params": params}, ids, np.zeros_like(ids), np.ones_like(ids))
      theirs = hf(input_ids=t, token_type_ids=torch.zeros_like(t))
      if hasattr(theirs, "prediction_logits"):  # BertForPreTraining: MLM and next-sentence heads
        pairs = [(out["mlm_logits"], theirs.prediction_logits)]
        pairs.append((out["nsp_logits"], theirs.seq_relationship_logits))
      else:
        pairs = [(out["mlm_logits"], theirs.logits)]
      return [(np.asarray(a), b.numpy()) for a, b in pairs]
    if family == "encdec":
      ours = model.apply({"params": params}, x["tokens"], x["decoder"])
      d = torch.from_numpy(x["decoder"].astype(np.int64))
      return [(np.asarray(ours), hf(input_ids=t, decoder_input_ids=d).logits.numpy())]
    ours = model.apply({"params": params}, x["tokens"])
    return [(np.asarray(ours), hf(input_ids=t).logits.numpy())]


def check(workdir: str, out: str, sentences: list[str]) -> dict:
  export(workdir, out)
  trainable, params, tokenizer = pretrained.load_trained(workdir)
  family = pretrained.saved_family(workdir)
  config = dataclasses.replace(trainable.model.config, dtype="float32")  # compare in f32
  model = registry.build_model(family, config)
  params = jax.device_get(params)
  hf, class_name, bad_weights = load_hf(out)
  theirs = transformers.AutoTokenizer.from_pretrained(out)
  same_ids, diffs, tokens = True, [], 0
  for text in sentences:
    x = inputs(family, tokenizer, text, min(MAX_TOKENS, config.max_len))
    same_ids &= theirs(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)
    tokens += x["tokens"].shape[1]
    for ours, want in logits_pair(family, model, params, hf, x):
      # flaxlm pads its vocabulary (pad_vocab_to); the export drops those rows.
      diffs.append(float(np.max(np.abs(ours[..., : want.shape[-1]] - want))))
  return {
    "workdir": workdir,
    "family": family,
    "hf_class": class_name,
    "max_abs_logit_diff": max(diffs),
    "sentences": len(sentences),
    "tokens": tokens,
    "same_token_ids": bool(same_ids),
    "missing_or_unexpected_weights": bad_weights,
    "hf_dir": out,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workdirs", nargs="+", help="flaxlm pretraining workdirs")
  parser.add_argument("--out_dir", default="", help="where the exports go (default: a temp dir)")
  parser.add_argument("--text_file", default="", help="sentences, one per line (first 4)")
  args = parser.parse_args()
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  if args.text_file:
    with open(args.text_file, encoding="utf-8") as f:
      sentences = [line.strip() for line in f if line.strip()][:4]
  else:
    sentences = default_sentences()
  out_dir = args.out_dir or tempfile.mkdtemp(prefix="flaxlm_export_")
  for i, workdir in enumerate(args.workdirs):
    name = f"{i}_{os.path.basename(os.path.normpath(workdir))}"
    print(json.dumps(check(workdir, os.path.join(out_dir, name), sentences)), flush=True)


if __name__ == "__main__":
  main()
