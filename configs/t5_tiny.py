"""T5-tiny (2 + 2 layers x 128, 4 heads, MLP 512; relative position bias, RMSNorm, ReLU)
span-corruption pretraining: 15% of each window's tokens in spans of mean length 3 are cut
out, each span replaced by a sentinel <extra_id_i>, and the decoder predicts the spans.

  python train.py --config=configs/t5_tiny.py --workdir=/tmp/t5_tiny
  # real text: --config.dataset=text:../shared/data/tinyshakespeare.txt

Data: the embedded CPython docs (no download), 10% held out; SentencePiece BPE 4k with
<pad> </s> <unk> and 100 sentinels. Rows are 128 encoder tokens (a window of 146 tokens
corrupted) and 35 decoder tokens. eval_loss and eval_accuracy (target token accuracy) in
metrics.jsonl fall and rise on the held-out text; at the end train.py prints one held-out
input, its target and the model's greedy prediction. 600 steps x 32 rows.
Hardware: 2 CPU cores, 5 minutes. Measured: eval_loss 5.97 -> 5.04 and target-token accuracy
17.4% -> 28.6% from step 100 to 600 (the model has learned the sentinel layout and frequent
words; a sample prediction is still mostly "<extra_id_0> the<extra_id_1> the ...").
"""

from flaxlm.config import default_config, model_preset


def get_config():
  c = default_config()
  c.model_family = "encdec"
  c.model = model_preset("encdec", "t5_tiny")
  c.model.dropout_rate = 0.0
  c.objective = "span_corruption"
  c.tokenizer.kind = "sentencepiece"
  c.tokenizer.vocab_size = 4096
  c.tokenizer.special_tokens = "t5"
  c.seq_len = 128
  c.batch_size = 32
  c.num_train_steps = 600
  c.learning_rate = 3e-3
  c.min_learning_rate = 1e-4
  c.warmup_steps = 100
  c.weight_decay = 0.0
  c.log_every = 50
  c.eval_every = 100
  c.eval_batches = 4
  c.checkpoint_every = 300
  c.sample_tokens = 0
  return c
