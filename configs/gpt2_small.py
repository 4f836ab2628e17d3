"""GPT-2 small (124M: 12 layers x 768, 12 heads, context 1024) for a GPU or TPU host.

  python train.py --config=configs/gpt2_small.py --workdir=/ckpt/gpt2_small \
      --config.dataset='text:/data/openwebtext/*.txt'

Hardware: one 8-chip TPU v4/v5e host or an 8-GPU box (global batch 256 x 1024 = 262k
tokens per step, FSDP over all devices). On more hosts, run the same command on every host
(`jax.distributed` auto-detects TPU pods and SLURM). Not run to completion here: this
repository's machine has 2 CPU cores; on it the config only builds and shards its state.
Expect (not measured here): nanoGPT's GPT-2 reproduction on OpenWebText reaches ~2.85
validation loss after 600k steps of 0.5M tokens; this config runs 100k steps of 262k tokens.
Tokenizer: a 32k SentencePiece BPE trained on the first use of the dataset.
Data limit: the pipeline tokenizes the whole training split once, on first use, into a
cached .npy in the workdir, so the corpus must fit in host RAM (streaming is not built yet).
"""

from flaxlm.config import default_config, model_preset


def get_config():
  c = default_config()
  c.model = model_preset("gpt", "gpt2_small")
  c.model.vocab_size = 0  # from the tokenizer, padded to a multiple of 128
  c.model.dtype = "bfloat16"
  c.model.dropout_rate = 0.0
  c.model.scan_layers = True
  c.model.remat_policy = "save_dots_no_batch"
  c.tokenizer.kind = "sentencepiece"
  c.tokenizer.vocab_size = 32768
  c.dataset = "text:/data/openwebtext/*.txt"
  c.seq_len = 1024
  c.batch_size = 256
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
