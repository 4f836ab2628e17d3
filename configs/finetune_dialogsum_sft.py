"""DialogSum summarization by instruction tuning a flaxlm GPT (configs/gpt_dialogsum.py):
'Summarize the dialogue' + the dialogue -> its summary, the loss on the summary alone.

  python train.py --config=configs/gpt_dialogsum.py --workdir=/tmp/gpt_dialogsum   # once
  python finetune.py --config=configs/finetune_dialogsum_sft.py --workdir=/tmp/dialogsum_sft

Data: ../shared/data/dialogsum/train.jsonl (12,460 dialogue / summary pairs) and dev.jsonl
(500), scored by ROUGE-1/2/L (rouge-score) and BLEU on greedy summaries; README shows the
lead-3 baseline (`python bench/dialogsum_lead.py`) beside it. Rows of 512 tokens pack 2
examples; the dialogue keeps its last 448 tokens; summaries up to 64 tokens.
Hardware: 2 CPU cores. Measured 2026-12-03: 8,574 s (2.4 h, ~5.3 s a step) for 1,500 steps;
dev ROUGE-1 31.11, ROUGE-2 8.04, ROUGE-L 25.60, BLEU 16.32 (lead-3: 28.36 / 7.80 / 21.47);
29.51 / 6.14 / 24.37 at step 750. Details in README (Fine-tuning results).
"""

from flaxlm.config.finetuning import finetune_config, task_block

SHARED = "../shared/data/dialogsum/"


def get_config():
  c = finetune_config()
  c.init_from = "/tmp/gpt_dialogsum"
  c.init_from_command = (
    "python train.py --config=configs/gpt_dialogsum.py --workdir=/tmp/gpt_dialogsum"
  )
  c.task = task_block("sft")
  c.task.template = "Summarize the dialogue.\n{prompt}\nSummary:"
  c.task.max_len = 512
  c.task.pack = 2
  c.task.target_len = 64
  c.train_data = "jsonl:" + SHARED + "train.jsonl"
  c.eval_data = "jsonl:" + SHARED + "dev.jsonl"
  c.columns.prompt = "dialogue"
  c.columns.response = "summary"
  c.batch_size = 16
  c.num_train_steps = 1500
  c.learning_rate = 5e-4
  c.schedule = "linear"
  c.warmup_steps = 100
  c.weight_decay = 0.01
  c.eval_every = 750
  c.checkpoint_every = 250
  c.eval_batch_size = 32
  return c
