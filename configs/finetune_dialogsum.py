"""DialogSum summarization with an encoder-decoder trained from scratch: the original
Transformer sized as configs/transformer_multi30k.py (3 + 3 layers x 256), dialogue ->
summary, beam search for the summaries.

  python finetune.py --config=configs/finetune_dialogsum.py --workdir=/tmp/dialogsum

Data: ../shared/data/dialogsum/train.jsonl (12,460 dialogue / summary pairs) and dev.jsonl
(500), scored by ROUGE-1/2/L (rouge-score) and BLEU; README shows the lead-3 baseline
(`python bench/dialogsum_lead.py`) beside it. One 8k SentencePiece vocabulary for both
sides; dialogues cut to 384 tokens, summaries to 64; label smoothing 0.1.
Hardware: 2 CPU cores. Measured 2026-12-02: ROUGE-1/2/L 33.48 / 8.76 / 27.17, BLEU 17.05 on
dev after 2,400 steps (lead-3: 28.36 / 7.80 / 21.47), 9,816 s of loop (~2.7 h, resumed three
times); README (Fine-tuning results) has the steps between.
"""

from flaxlm.config.finetuning import finetune_config, task_block, with_model_preset

SHARED = "../shared/data/dialogsum/"


def get_config():
  c = finetune_config()
  with_model_preset(c, "encdec", "transformer_small")
  c.model.max_len = 384
  c.tokenizer.kind = "sentencepiece"
  c.tokenizer.vocab_size = 8192
  c.task = task_block("seq2seq")
  c.task.max_len = 384
  c.task.target_len = 64
  c.task.beam_size = 4
  c.train_data = "jsonl:" + SHARED + "train.jsonl"
  c.eval_data = "jsonl:" + SHARED + "dev.jsonl"
  c.columns.text = "dialogue"
  c.columns.target = "summary"
  c.batch_size = 16
  c.num_train_steps = 2400
  c.learning_rate = 7e-4
  c.schedule = "cosine"
  c.min_learning_rate = 5e-5
  c.warmup_steps = 400
  c.weight_decay = 0.0
  c.b2 = 0.98
  c.label_smoothing = 0.1
  c.eval_every = 800
  c.checkpoint_every = 400
  c.eval_batch_size = 32
  return c
