"""The lead-3 baseline of DialogSum: each dialogue's first three turns as its summary, scored
with the ROUGE and BLEU that finetune.py reports (flaxlm.tasks.metrics.generation).

  python bench/dialogsum_lead.py [--data=../shared/data/dialogsum/dev.jsonl]

Prints one JSON line: rouge1, rouge2, rougeL (F-measures, rouge-score, stemmed) and bleu.
"""

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from flaxlm.tasks import metrics  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", default="../shared/data/dialogsum/dev.jsonl")
  parser.add_argument("--turns", type=int, default=3)
  args = parser.parse_args()
  rows = [json.loads(line) for line in open(args.data, encoding="utf-8") if line.strip()]
  lead = ["\n".join(r["dialogue"].split("\n")[: args.turns]) for r in rows]
  print(
    json.dumps(
      {"baseline": f"lead-{args.turns}", **metrics.generation(lead, [[r["summary"]] for r in rows])}
    )
  )


if __name__ == "__main__":
  main()
