"""Sample text from a trained workdir's newest checkpoint (KV-cache decoding).

  python generate.py --workdir=/tmp/flaxlm_tiny --prompt="The " --max_new_tokens=200 \
      [--temperature=0.8] [--top_k=40] [--top_p=0.95] [--greedy] [--num_samples=2] [--seed=0]

The tokenizer and model config are read from the checkpoint, never from the current config.
"""

import sys

from absl import flags

from flaxlm import cli
from flaxlm.sampling import SamplingConfig, sample_text
from flaxlm.trainer import load_trained

_WORKDIR = flags.DEFINE_string("workdir", None, "a train.py workdir holding checkpoints/.")
_PROMPT = flags.DEFINE_string("prompt", "", "text to continue ('' starts from scratch).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 200, "tokens to generate.")
_TEMPERATURE = flags.DEFINE_float(
  "temperature", 0.8, "softmax temperature (ignored with --greedy)."
)
_TOP_K = flags.DEFINE_integer("top_k", 0, "keep the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "nucleus sampling: keep the smallest set with this mass.")
_GREEDY = flags.DEFINE_bool("greedy", False, "always take the most likely token.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "independent samples, decoded as one batch.")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed.")


def main(argv):
  cli.parse_flags(argv)
  cli.setup_logging()
  if not _WORKDIR.value:
    sys.exit("generate.py: --workdir is required (the directory train.py wrote)")
  try:
    trainable, params, tokenizer = load_trained(_WORKDIR.value)
  except (FileNotFoundError, ValueError) as e:  # CheckpointMismatchError is a ValueError
    sys.exit(f"generate.py: {e}")
  config = SamplingConfig(
    max_new_tokens=_MAX_NEW.value,
    temperature=0.0 if _GREEDY.value else _TEMPERATURE.value,
    top_k=_TOP_K.value,
    top_p=_TOP_P.value,
  )
  try:
    texts = sample_text(
      trainable,
      params,
      tokenizer,
      _PROMPT.value,
      config,
      seed=_SEED.value,
      num_samples=_NUM_SAMPLES.value,
    )
  except ValueError as e:
    sys.exit(f"generate.py: {e}")
  for i, text in enumerate([texts] if isinstance(texts, str) else texts):
    print(f"--- sample {i} ---\n{_PROMPT.value}{text}")


if __name__ == "__main__":
  main(sys.argv)
