"""A 0.85B-parameter LLaMA-style decoder (RoPE, RMSNorm, SwiGLU, grouped-query attention
32/8) for 8 x H100 or a TPU pod slice.

  python train.py --config=configs/llama_1b.py --workdir=gs://bucket/llama_1b \
      --config.dataset=tfds:c4/en

Parameters: 16 layers x 45.09M (attention 2048 x 64 x (32 + 32 + 8 + 8) = 10.49M, SwiGLU
3 x 2048 x 5632 = 34.60M) + embedding and untied output 2 x 32,000 x 2048 = 131.07M
= 852.6M (earlier docs said ~1.2B; the arithmetic says 0.85B).
Hardware: 8 x H100 80GB (mesh fsdp 4 x tensor 2), or a TPU v4-32 / v5e-32 slice with the same
command (fsdp 16 across hosts x 2-way tensor parallelism within a host). Global batch 512 x 2048
= 1,048,576 tokens per step, in 8 microbatches: 512 / 4 (fsdp) / 8 = 16 rows of 2048 tokens
per device at a time. bf16 compute, f32 parameters and Adam moments (12 bytes x 852.6M / 8
devices = 1.19 GiB each), layers under nn.scan with `minimal` remat (projections, MLP and
the attention output kept: cuDNN's fused attention is not re-run in the backward pass), and
the loss projects to the vocabulary 8 sequence chunks at a time.
Check it without data or accelerators:
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python train.py \
      --config=configs/llama_1b.py --workdir=/tmp/l1b --dry_run
prints 44.00 GiB peak per device (73% of the 60 GiB JAX's allocator takes of an H100 by
default, XLA_PYTHON_CLIENT_MEM_FRACTION=0.75; arguments 1.19 GiB, temporaries 42.80 GiB); the
previous plan (one microbatch, no vocabulary tiling, `save_dots_no_batch`) needed 317.6 GiB.
On 32 devices (XLA_FLAGS=--xla_force_host_platform_device_count=32, the v4-32 / v5e-32 mesh
fsdp 16 x tensor 2, 4 rows per device per microbatch) it prints 11.06 GiB (69% of a v5e).
XLA:CPU's analysis of the sharded program on an emulated 8-device mesh, with
CPU's einsum attention holding the 2048 x 2048 scores that cuDNN does not: an estimate of
the GPU's, not a measurement on one.
Not run here (2 CPU cores, no accelerator): no throughput or MFU figure for this config has
been measured; MFU is reported live in the log (bench/accelerator.py measures it).
Data: process 0 tokenizes the training split once, on first use, streaming documents
through one worker process per core into memory-mapped int32 token shards under
<workdir>/data (64 MB each, with an index); every host then reads only its own rows of each
global batch, so host memory does not grow with the corpus.
"""

from flaxlm.config import default_config, model_preset


def get_config():
  c = default_config()
  c.model = model_preset("gpt", "llama_1b")
  c.model.vocab_size = 0  # from the tokenizer (32k), padded to a multiple of 128
  c.model.dtype = "bfloat16"
  c.model.dropout_rate = 0.0
  c.model.remat_policy = "minimal"
  c.model.num_vocab_tiles = 8  # 2048 / 8 = 256 positions of logits at a time
  c.tokenizer.kind = "sentencepiece"
  c.tokenizer.vocab_size = 32000
  c.tokenizer.model_type = "bpe"
  c.dataset = "tfds:c4/en"
  c.seq_len = 2048
  c.batch_size = 512
  c.accum_steps = 8  # 512 / 4 (fsdp) / 8 = 16 rows per device per microbatch
  c.num_train_steps = 50_000
  c.learning_rate = 3e-4
  c.min_learning_rate = 3e-5
  c.warmup_steps = 2000
  c.weight_decay = 0.1
  c.b2 = 0.95
  c.z_loss = 1e-4
  c.log_every = 50
  c.eval_every = 2000
  c.eval_batches = 20
  c.eval_batch_size = 64
  c.checkpoint_every = 1000
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.tensor = 2
  return c
