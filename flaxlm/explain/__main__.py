"""The command line of flaxlm.explain.

python -m flaxlm.explain attention --workdir=<dir | hf:dir> --text=... [--text_pair=...]
    [--target=...] --out=<folder>
    PNG heatmaps of every attention layer (a panel per head and their mean) and of each
    layer's head mean, and head_view.html (interactive, self-contained), for encoder
    self-attention, decoder causal self-attention and encoder-decoder cross-attention
    (an encoder-decoder reads --target on its decoder side). maps.npz holds the arrays.
python -m flaxlm.explain attribute --workdir=<fine-tuned dir> --text=... [--text_pair=...]
    [--label=<class>] [--word=<i>] [--method=integrated_gradients|gradient_x_input]
    [--steps=50] [--baseline=zeros|pad] --out=<folder>
    Token attributions of a classifier's class (default: the predicted one) or of a tagger's
    tag at word i: attribution.html (coloured text), attribution.png (bars), attribution.json.
`--task=<name>` reads an hf: folder under that task's head (its own, when it holds one).
Each command prints one JSON line: the files written with their pixel sizes, and figures.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from flaxlm import cli


def _attention(args, subject) -> dict:
  from flaxlm.explain import attention, pages, pictures

  maps = attention.attention_maps(subject, args.text, args.text_pair, args.target)
  out = pathlib.Path(args.out)
  written = pictures.attention_pngs(maps, out)
  (out / "head_view.html").write_text(pages.head_view(maps, args.text), encoding="utf-8")
  np.savez(out / "maps.npz", **maps.maps)
  if maps.kernel not in ("", "einsum", "xla"):
    print(f"flaxlm.explain: the model runs the {maps.kernel} kernel, which keeps no "
          "probabilities; these maps come from the reference softmax on the same inputs",
          file=sys.stderr)  # fmt: skip
  shapes = {k: list(v.shape) for k, v in maps.maps.items()}
  return {"pngs": written, "html": "head_view.html", "maps": shapes, "kernel": maps.kernel}


def _attribute(args, subject) -> dict:
  from flaxlm.explain import attribution, pages, pictures

  a = attribution.attribute(subject, args.text, args.text_pair, args.label, args.word,
                            args.method, args.steps, args.baseline)  # fmt: skip
  out = pathlib.Path(args.out)
  written = pictures.attribution_png(a, out)
  (out / "attribution.html").write_text(pages.attribution_page(a, args.text), encoding="utf-8")
  figures = {
    "tokens": a.tokens, "scores": [round(float(s), 6) for s in a.scores], "label": a.label,
    "word": a.word, "score": a.score, "baseline_score": a.baseline_score, "delta": a.delta,
    "method": a.method, "steps": a.steps,
  }  # fmt: skip
  (out / "attribution.json").write_text(json.dumps(figures), encoding="utf-8")
  return {"pngs": written, "html": "attribution.html"} | figures


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    prog="python -m flaxlm.explain",
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  commands = parser.add_subparsers(dest="command", required=True)
  for name in ("attention", "attribute"):
    p = commands.add_parser(name)
    p.add_argument("--workdir", required=True, help="a workdir, or hf:<folder>")
    p.add_argument("--text", required=True)
    p.add_argument("--text_pair", default=None)
    p.add_argument("--out", required=True, help="the folder to write into (created)")
    p.add_argument("--task", default="", help="hf: folders: read under this task's head")
    p.add_argument("--num_labels", type=int, default=0, help="hf: with --task, a new head")
  commands.choices["attention"].add_argument("--target", default=None)
  p = commands.choices["attribute"]
  p.add_argument("--label", default=None, help="the class explained (default: predicted)")
  p.add_argument("--word", type=int, default=None, help="taggers: the word explained")
  p.add_argument("--method", default="integrated_gradients",
                 choices=["integrated_gradients", "gradient_x_input"])  # fmt: skip
  p.add_argument("--steps", type=int, default=50, help="integrated gradients' points")
  p.add_argument("--baseline", default="zeros", choices=["zeros", "pad"])
  args = parser.parse_args(argv)
  cli.setup_logging()
  from flaxlm.explain import subject

  with cli.user_errors("flaxlm.explain"):
    pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
    model = subject.load(args.workdir, args.task, args.num_labels)
    run = _attention if args.command == "attention" else _attribute
    print(json.dumps(run(args, model)))


if __name__ == "__main__":
  main()
