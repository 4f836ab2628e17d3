"""A BERT-mini masked LM on the Chinese text of ../shared/data (Song ci poems, the Analects,
Chinese fortunes): the backbone configs/finetune_cmrc2018.py fine-tunes for extractive QA.

  python train.py --config=configs/bert_zh.py --workdir=/tmp/bert_zh

Tokenizer: an 8k WordPiece (BERT's normalizer splits every CJK character into its own
word, so Chinese is read character by character). 4 layers x 256, batch 64 x 128, AdamW lr
1e-3 linear to 1e-4 over 1,500 steps, no dropout. The text is classical and poetic, far from
CMRC's Wikipedia passages: expect modest QA scores.
Hardware: 2 CPU cores. Time and result: see README (Fine-tuning results).
"""

from flaxlm.config import default_config, model_preset

SHARED = "../shared/data/"


def get_config():
  c = default_config()
  c.model_family = "bert"
  c.model = model_preset("bert", "bert_mini")
  c.model.max_len = 512
  c.model.nsp_head = False
  c.model.dropout_rate = 0.0
  c.dataset = "text:" + ",".join(
    SHARED + f for f in ("zh/song_ci.txt", "zh/lunyu.txt", "fortunes/fortunes_zh.txt")
  )
  c.tokenizer.kind = "wordpiece"
  c.tokenizer.vocab_size = 8192
  c.tokenizer.special_tokens = "bert"
  c.seq_len = 128
  c.batch_size = 64
  c.num_train_steps = 1500
  c.learning_rate = 1e-3
  c.min_learning_rate = 1e-4
  c.schedule = "linear"
  c.warmup_steps = 100
  c.weight_decay = 0.01
  c.decay_embeddings = True
  c.b2 = 0.999
  c.log_every = 50
  c.eval_every = 500
  c.eval_batches = 4
  c.eval_batch_size = 64
  c.checkpoint_every = 500
  c.sample_tokens = 0
  return c
