"""Quickstart: a tiny GPT on the CPython reference docs that ship with Python (no download).

  python train.py --config=configs/gpt_tiny.py --workdir=/tmp/flaxlm_tiny

Hardware: any CPU (2 cores here). Time: ~2.5 min for 600 steps on 2 cores (~9,200 tokens/s),
plus about a minute to install.
Expect: validation loss from ~7.6 (ln 2048) falling below ~4.5; a sample of reference-doc-like
text is printed at the end. 4 layers x 128 wide, ~0.8M parameters + 0.26M embedding.
"""

from flaxlm.config import default_config


def get_config():
  c = default_config()
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.embed_dim = 128
  c.model.mlp_dim = 512
  c.model.max_len = 256
  c.tokenizer.kind = "sentencepiece"
  c.tokenizer.vocab_size = 2048
  c.seq_len = 128
  c.batch_size = 16  # 16 x 128 = 2,048 tokens per step
  c.num_train_steps = 600
  c.learning_rate = 2e-3
  c.min_learning_rate = 2e-4
  c.warmup_steps = 50
  c.log_every = 25
  c.eval_every = 200
  c.eval_batches = 4
  c.eval_batch_size = 16
  c.checkpoint_every = 200
  c.sample_tokens = 120
  c.sample_prompt = "The "
  return c
