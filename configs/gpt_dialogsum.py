"""A small GPT pretrained on the dialogues of DialogSum's training split (no summaries): the
backbone that configs/finetune_dialogsum_sft.py instruction-tunes to summarize.

  python train.py --config=configs/gpt_dialogsum.py --workdir=/tmp/gpt_dialogsum

Data: the `dialogue` field of ../shared/data/dialogsum/train.jsonl (12,460 dialogues, ~1.6M
words); held-out loss on dev.jsonl's dialogues. 4 layers x 256 (4 heads, MLP 1024), learned
positions up to 512, an 8k SentencePiece BPE that keeps newlines and speaker tags, batch
16 x 256 tokens, AdamW lr 1e-3 cosine to 1e-4 over 1,000 steps.
Hardware: 2 CPU cores. Measured 2026-12-02: 2,165 s (36 min, ~2.1 s a step) for the loop;
held-out loss 3.195 (perplexity 24.4, next-token accuracy 42.6%); 3.425 at step 500.
"""

from flaxlm.config import default_config

SHARED = "../shared/data/dialogsum/"


def get_config():
  c = default_config()
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.embed_dim = 256
  c.model.mlp_dim = 1024
  c.model.max_len = 512
  c.dataset = "jsonl:" + SHARED + "train.jsonl"
  c.eval_dataset = "jsonl:" + SHARED + "dev.jsonl"
  c.text_feature = "dialogue"
  c.tokenizer.kind = "sentencepiece"
  c.tokenizer.vocab_size = 8192
  c.seq_len = 256
  c.batch_size = 16  # 16 x 256 = 4,096 tokens per step
  c.num_train_steps = 1000
  c.learning_rate = 1e-3
  c.min_learning_rate = 1e-4
  c.warmup_steps = 100
  c.log_every = 50
  c.eval_every = 500
  c.eval_batches = 8
  c.eval_batch_size = 16
  c.checkpoint_every = 500
  c.sample_tokens = 100
  c.sample_prompt = "#Person1#: "
  return c
