"""SST-2 sentiment with the no-pretraining baseline: a word-level BiLSTM (128-d random
embeddings, 128 x 2 hidden, mean pooling, dropout 0.3), as the PyTorch reference of
../shared/REFERENCE.md.

  python finetune.py --config=configs/finetune_sst2_lstm.py --workdir=/tmp/sst2_lstm

Data: ../shared/data/sst2/train.tsv (67,349 phrases, lowercased words, every training word
in the vocabulary) and dev.tsv (872 sentences). Adam lr 2e-3, batch 64, up to 64 words.
Hardware: 2 CPU cores. Measured 2026-12-01: dev accuracy 85.0% (best checkpoint, step 1,250,
after 251 s), 401 s for the 2 epochs (README, Fine-tuning results).
"""

from flaxlm.config.finetuning import finetune_config, task_block, with_model_preset

SHARED = "../shared/data/sst2/"


def get_config():
  c = finetune_config()
  with_model_preset(c, "lstm", "bilstm")
  c.tokenizer.kind = "word"
  c.tokenizer.lowercase = True
  c.tokenizer.vocab_size = 50_000  # every training word (SST-2 has ~15k)
  c.task = task_block("classification")
  c.task.max_len = 64
  c.task.dropout_rate = 0.0  # the BiLSTM applies its own dropout
  c.train_data = "tsv:" + SHARED + "train.tsv"
  c.eval_data = "tsv:" + SHARED + "dev.tsv"
  c.columns.text = "sentence|content"  # train.tsv and dev.tsv name it differently
  c.batch_size = 64
  c.num_epochs = 2.0  # 2 x 67k / 64 = 2,105 steps
  c.learning_rate = 2e-3
  c.schedule = "constant"
  c.warmup_steps = 0
  c.weight_decay = 0.0
  c.b2 = 0.999
  c.eval_every = 250
  c.checkpoint_every = 500
  c.eval_batch_size = 64
  c.log_every = 50
  return c
