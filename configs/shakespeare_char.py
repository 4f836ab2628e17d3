"""nanoGPT's CPU recipe: a character-level GPT on Tiny Shakespeare.

  python train.py --config=configs/shakespeare_char.py --workdir=/tmp/shakespeare_char \
      --config.dataset=text:../shared/data/tinyshakespeare.txt

Hardware: 2 CPU cores. Same recipe as nanoGPT's `train_shakespeare_char.py` run on CPU
(4 layers x 4 heads x 128, block 64, batch 12, 2,000 steps, lr 1e-3 cosine to 1e-4, warmup
100, dropout 0, AdamW b2 0.99, weight decay 0.1 on all matrices, clip 1.0, no biases).
Expect: validation loss ~1.89-1.90 on the first 30,720 held-out characters (nanoGPT's own
model scores 1.887 on them; its published 1.88 is from random batches) in under two
minutes on 2 cores; see README for the measured figures. 12 x 64 = 768 tokens per step,
data-parallel over one XLA device per core (`cpu_devices=-1`).
"""

from flaxlm.config import default_config


def get_config():
  c = default_config()
  c.dataset = "text:../shared/data/tinyshakespeare.txt"
  c.tokenizer.kind = "char"  # 65 characters
  c.pad_vocab_to = 1
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.embed_dim = 128
  c.model.mlp_dim = 512
  c.model.max_len = 64
  c.model.use_bias = False
  c.model.dropout_rate = 0.0
  c.seq_len = 64
  c.window_stride = 1  # every character offset is a training window (nanoGPT's random crops)
  c.batch_size = 12
  c.num_train_steps = 2000
  c.learning_rate = 1e-3
  c.min_learning_rate = 1e-4
  c.warmup_steps = 100
  c.b2 = 0.99
  c.weight_decay = 0.1
  c.decay_embeddings = True
  c.grad_clip_norm = 1.0
  c.log_every = 100
  c.eval_every = 500
  c.eval_batches = 40  # 40 x 12 x 64 = 30,720 held-out characters
  c.eval_batch_size = 12
  c.checkpoint_every = 1000
  c.sample_tokens = 57  # fills the 64-character context after the 7-character prompt
  c.sample_prompt = "ROMEO:\n"
  c.cpu_devices = -1  # one XLA device per core, data-parallel: ~20% faster at this size
  return c
