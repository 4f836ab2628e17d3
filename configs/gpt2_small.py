"""GPT-2 small (12 layers x 768, 12 heads, context 1024) for a GPU or TPU host: 111.0M
parameters with this config's 32k SentencePiece vocabulary (124M with GPT-2's 50,304).

  python train.py --config=configs/gpt2_small.py --workdir=/ckpt/gpt2_small \
      --config.dataset='text:/data/openwebtext/*.txt'

Hardware: one 8-chip TPU v5e/v4 host or an 8-GPU box (global batch 256 x 1024 = 262,144
tokens per step = 2 microbatches of 128 x 1024, FSDP over all devices). On more hosts, run
the same command on every host (`jax.distributed` auto-detects TPU pods and SLURM).
Memory plan (sized for a v5e's 16 GiB): 256 rows / 8 devices / 2 microbatches = 16 rows of
1024 tokens per device at a time; `minimal` remat keeps the projections, MLP and attention
outputs of each layer (a fused attention kernel is not re-run in the backward pass); the
loss projects to the 32,768-piece vocabulary 4 sequence chunks at a time (no 16 x 1024 x 32k
float32 logits). Check it without data or accelerators:
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python train.py \
      --config=configs/gpt2_small.py --workdir=/tmp/g2 --dry_run
prints 9.94 GiB peak per device (62% of a v5e; arguments 0.16 GiB, temporaries 9.79 GiB);
the previous plan (one microbatch, no vocabulary tiling, `save_dots_no_batch` remat) needed
20.97 GiB, 131% of a v5e. These are
XLA:CPU's analysis of the sharded program on an emulated 8-device mesh, with the einsum
attention CPU runs (which holds the attention scores that TPU/GPU kernels do not): an
estimate of the accelerator's, not a measurement on one.
Not run to completion here: this repository's machine has 2 CPU cores and no accelerator.
Expect (not measured here): nanoGPT's GPT-2 reproduction on OpenWebText reaches ~2.85
validation loss after 600k steps of 0.5M tokens; this config runs 100k steps of 262k tokens.
Tokenizer: a 32k SentencePiece BPE trained on the first use of the dataset.
Data: process 0 tokenizes the training split once, on first use, streaming documents
through one worker process per core into memory-mapped int32 token shards under
<workdir>/data (64 MB each, with an index); every host then reads only its own rows of each
global batch, so host memory does not grow with the corpus.
"""

from flaxlm.config import default_config, model_preset


def get_config():
  c = default_config()
  c.model = model_preset("gpt", "gpt2_small")
  c.model.vocab_size = 0  # from the tokenizer, padded to a multiple of 128
  c.model.dtype = "bfloat16"
  c.model.dropout_rate = 0.0
  c.model.scan_layers = True
  c.model.remat_policy = "minimal"
  c.model.num_vocab_tiles = 4  # 1024 / 4 = 256 positions of logits at a time
  c.tokenizer.kind = "sentencepiece"
  c.tokenizer.vocab_size = 32768
  c.dataset = "text:/data/openwebtext/*.txt"
  c.seq_len = 1024
  c.batch_size = 256
  c.accum_steps = 2  # 256 / 8 devices / 2 = 16 rows per device per microbatch
  c.num_train_steps = 100_000
  c.learning_rate = 6e-4
  c.min_learning_rate = 6e-5
  c.warmup_steps = 2000
  c.weight_decay = 0.1
  c.b2 = 0.95
  c.log_every = 100
  c.eval_every = 2000
  c.eval_batches = 20
  c.eval_batch_size = 64
  c.checkpoint_every = 2000
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.tensor = 1
  return c
