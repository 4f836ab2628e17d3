"""CoNLL-2003 English NER with a flaxlm-pretrained BERT (configs/bert_tiny.py): its hidden
state at each word's first sub-word into a new tag classifier, every weight fine-tuned.

  python train.py --config=configs/bert_tiny.py --workdir=/tmp/bert_tiny   # once, ~19 min
  python finetune.py --config=configs/finetune_conll2003.py --workdir=/tmp/conll_bert

Data: ../shared/data/conll2003/train.bio.txt (14,041 sentences) and valid.bio.txt (3,250),
BIO tags, entity F1 with CoNLL semantics (seqeval). bert_tiny's vocabulary is uncased, which
costs NER (case marks names); pretrain with --config.tokenizer.lowercase=false for a cased one.
Hardware: 2 CPU cores. Measured 2026-12-02: entity F1 59.0 after 1,039 s of fine-tuning (the
uncased vocabulary and small pretraining show; the BiLSTM of finetune_conll2003_lstm.py
reaches 87.8 in 509 s: README).
"""

from flaxlm.config.finetuning import finetune_config, task_block

SHARED = "../shared/data/conll2003/"


def get_config():
  c = finetune_config()
  c.init_from = "/tmp/bert_tiny"
  c.init_from_command = "python train.py --config=configs/bert_tiny.py --workdir=/tmp/bert_tiny"
  c.model.dropout_rate = 0.1
  c.task = task_block("token_classification")
  c.task.max_len = 128
  c.train_data = "conll:" + SHARED + "train.bio.txt"
  c.eval_data = "conll:" + SHARED + "valid.bio.txt"
  c.drop_duplicates = False
  c.batch_size = 32
  c.num_epochs = 10.0  # 10 x 14k / 32 = 4,388 steps
  c.learning_rate = 5e-4
  c.schedule = "linear"
  c.warmup_steps = 400
  c.weight_decay = 0.01
  c.eval_every = 500
  c.checkpoint_every = 1000
  c.eval_batch_size = 64
  return c
