"""CoNLL-2003 English NER with the no-pretraining baseline: a BiLSTM tagger over word
embeddings and a character CNN (Ma & Hovy 2016, without the CRF), every tag predicted by a
softmax.

  python finetune.py --config=configs/finetune_conll2003_lstm.py --workdir=/tmp/conll_lstm

Data: ../shared/data/conll2003/train.bio.txt (14,041 sentences) and valid.bio.txt (3,250),
BIO tags; entity F1 with CoNLL semantics (seqeval). Word vectors are lowercased and cover
words seen twice (as the PyTorch reference's); the char CNN reads every word's spelling with
its case (which marks names), [UNK]s included.
Hardware: 2 CPU cores. Measured 2026-12-01: entity F1 87.8 after 509 s of fine-tuning (85.8
at 217 s; README, Fine-tuning results).
"""

from flaxlm.config.finetuning import finetune_config, task_block, with_model_preset

SHARED = "../shared/data/conll2003/"


def get_config():
  c = finetune_config()
  with_model_preset(c, "lstm", "bilstm_char")
  c.tokenizer.kind = "word"
  c.tokenizer.lowercase = True  # word vectors shared across case; the char CNN reads the case
  c.tokenizer.vocab_size = 50_000
  c.tokenizer.min_count = 2  # rarer words are [UNK]: the model learns to read their spelling
  c.task = task_block("token_classification")
  c.task.max_len = 128
  c.task.dropout_rate = 0.0
  c.train_data = "conll:" + SHARED + "train.bio.txt"
  c.eval_data = "conll:" + SHARED + "valid.bio.txt"
  c.columns.word_index = 0
  c.columns.tag_index = -1
  c.drop_duplicates = False  # repeated sentences (scores, datelines) are real data
  c.batch_size = 32
  c.num_epochs = 6.0
  c.learning_rate = 2e-3
  c.schedule = "linear"
  c.warmup_steps = 100
  c.weight_decay = 0.0
  c.b2 = 0.999
  c.eval_every = 500
  c.checkpoint_every = 500
  c.eval_batch_size = 64
  return c
