"""Prepare a config's tokenized corpus (tokenizer + token shards) without training, so the
hosts of a pod, or many runs, read one copy:

  python -m flaxlm.data.prepare --config=configs/gpt_tiny.py [--config.key=value ...] --out=<dir>
  python train.py --config=configs/gpt_tiny.py [same keys] --config.corpus_cache=<dir> --workdir=...

The folder is what train.py would build in `<workdir>/data`; a run reads it as it is and
refuses one prepared from other inputs or with another tokenizer (naming the keys that
differ). Rerunning this command on a folder prepared for other settings rebuilds it.
"""

from __future__ import annotations

import sys

from absl import flags

from flaxlm import cli
from flaxlm.config import from_config_dict
from flaxlm.errors import ConfigError
from flaxlm.train import validation

PROGRAM = "python -m flaxlm.data.prepare"
_CONFIG = cli.define_config_flag("configs/gpt_tiny.py")
_OUT = flags.DEFINE_string("out", None, "folder for the corpus (default: config.corpus_cache).")


def main(argv: list[str]) -> None:
  cli.parse_flags(argv)
  cli.setup_logging()
  _, run = cli.read_config(_CONFIG, from_config_dict, PROGRAM)
  out = _OUT.value or run.corpus_cache
  if not out:
    sys.exit(f"{PROGRAM}: --out=<dir> is required (or set --config.corpus_cache)")
  with cli.user_errors(PROGRAM):
    if run.init_from:  # the tokenizer would be the checkpoint's, known only to train.py
      raise ConfigError(
        f"init_from={run.init_from!r} runs tokenize with their checkpoint's tokenizer; let "
        "train.py prepare the corpus (it writes it to --config.corpus_cache when that is empty)"
      )
    validation.check_dataset(run.data.dataset, run.data.text_feature, "dataset")
    if run.data.eval_dataset:
      validation.check_dataset(run.data.eval_dataset, run.data.text_feature, "eval_dataset")
    from flaxlm.data import corpus  # TFDS and JAX load after the flags are checked

    data = corpus.load_corpus(run.data, run.tokenizer, out)
  unit = "pairs" if isinstance(data.train, corpus.Pairs) else "tokens"
  print(
    f"prepared {out}: {len(data.train):,} training and {len(data.validation):,} validation "
    f"{unit}, {run.tokenizer.kind} tokenizer of {data.tokenizer.vocab_size:,} ids"
  )


if __name__ == "__main__":
  main(sys.argv)
