"""A ~1.2B-parameter LLaMA-style decoder (RoPE, RMSNorm, SwiGLU, grouped-query attention 32/8)
for a TPU pod slice or a multi-GPU host.

  python train.py --config=configs/llama_1b.py --workdir=gs://bucket/llama_1b \
      --config.dataset=tfds:c4/en

Hardware: TPU v4-32 / v5e-32 or 8 x H100 (global batch 512 x 2048 = 1M tokens per step;
FSDP across hosts x 2-way tensor parallelism within a host via config.mesh). bf16 compute,
f32 parameters, layers under nn.scan with `save_dots_no_batch` rematerialization.
Not run here (2 CPU cores): the test suite only checks that the model, optimizer state and
their shardings build on an emulated 8-device mesh. MFU is reported live in the log; no
figure for this config has been measured on accelerators yet.
Data limit: the pipeline tokenizes the whole training split once, on first use, into a
cached .npy in the workdir, so the corpus must fit in host RAM (streaming is not built yet).
"""

from flaxlm.config import default_config, model_preset


def get_config():
  c = default_config()
  c.model = model_preset("gpt", "llama_1b")
  c.model.vocab_size = 0  # from the tokenizer (32k), padded to a multiple of 128
  c.model.dtype = "bfloat16"
  c.model.dropout_rate = 0.0
  c.tokenizer.kind = "sentencepiece"
  c.tokenizer.vocab_size = 32000
  c.tokenizer.model_type = "bpe"
  c.dataset = "tfds:c4/en"
  c.seq_len = 2048
  c.batch_size = 512
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
