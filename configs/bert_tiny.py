"""BERT-tiny (2 layers x 128, 2 heads, MLP 512) masked-LM pretraining, the recipe of the
Hugging Face reference in ../shared/REFERENCE.md.

  python train.py --config=configs/bert_tiny.py --workdir=/tmp/bert_tiny

Data: King James Bible + English fortunes + Tiny Shakespeare from ../shared/data (pass your
own with --config.dataset=text:a.txt,b.txt), evaluated on 400 [CLS] + 126 + [SEP] sequences
of WikiText-2 validation, which is never trained on. Tokenizer: the reference's, an uncased
WordPiece with 8,192 pieces and [PAD] [UNK] [CLS] [SEP] [MASK] reserved, trained on the
training text on first use (needs `pip install 'flaxlm[wordpiece]'`). MLM: 15% of
non-special tokens, 80/10/10, a fresh mask each step (the MLM head runs only at the 20
masked slots per sequence). Batch 64 x 128 (8,064 tokens), AdamW lr 2e-3 linear to 1e-4
over 1,600 steps, warmup 150, weight decay 0.01, no dropout. The training text is 1.98M
tokens, so 1,600 steps are 6.5 epochs.
Hardware: 2 CPU cores; 18.7 minutes (0.70 s/step) plus 20 s for the tokenizer. Measured
held-out MLM accuracy (eval_accuracy in metrics.jsonl): 9.4% at 342 s, 10.2% at 433 s, 12.0%
at 800 s, 12.5% at the end (1,119 s); README has the curve beside the PyTorch reference's
9.3% at 20 minutes.
"""

from flaxlm.config import default_config, model_preset

SHARED = "../shared/data/"


def get_config():
  c = default_config()
  c.model_family = "bert"
  c.model = model_preset("bert", "bert_tiny")
  c.model.max_len = 128
  c.model.nsp_head = False  # MLM only, as in the reference
  c.model.dropout_rate = 0.0  # a 20-minute run of a 2-layer model underfits; see the docstring
  c.dataset = "text:" + ",".join(
    SHARED + f for f in ("kjv_bible.txt", "fortunes/fortunes_en.txt", "tinyshakespeare.txt")
  )
  c.eval_dataset = "text:" + SHARED + "wikitext2/valid.txt"
  c.tokenizer.kind = "wordpiece"  # as the reference
  c.tokenizer.vocab_size = 8192
  c.tokenizer.special_tokens = "bert"
  c.tokenizer.lowercase = True
  c.seq_len = 128
  c.batch_size = 64
  c.num_train_steps = 1600  # 1,600 x 0.70 s: the schedule ends inside the 20 minutes
  c.learning_rate = 2e-3
  c.min_learning_rate = 1e-4
  c.schedule = "linear"
  c.warmup_steps = 150
  c.weight_decay = 0.01
  c.decay_embeddings = True
  c.b2 = 0.999
  c.log_every = 50
  c.eval_every = 125
  c.eval_batches = 10
  c.eval_batch_size = 40  # 400 held-out sequences (the same as 8 x 50); divides 8 devices
  c.checkpoint_every = 1000
  c.sample_tokens = 0
  return c
