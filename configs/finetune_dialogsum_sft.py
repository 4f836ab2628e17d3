"""DialogSum summarization by instruction tuning a flaxlm GPT (configs/gpt_dialogsum.py):
'Summarize the dialogue' + the dialogue -> its summary, the loss on the summary alone.

  python train.py --config=configs/gpt_dialogsum.py --workdir=/tmp/gpt_dialogsum   # once
  python finetune.py --config=configs/finetune_dialogsum_sft.py --workdir=/tmp/dialogsum_sft

Data: ../shared/data/dialogsum/train.jsonl (12,460 dialogue / summary pairs) and dev.jsonl
(500), scored by ROUGE-1/2/L (rouge-score) and BLEU on greedy summaries; README shows the
lead-3 baseline (`python bench/dialogsum_lead.py`) beside it. Rows of 512 tokens pack up to 2
examples; the dialogue keeps its last 448 tokens; summaries up to 64 tokens.
Hardware: 2 CPU cores. Time and result: see README (Fine-tuning results).
"""

from flaxlm.config_finetune import finetune_config, task_block

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
  c.num_train_steps = 1200
  c.learning_rate = 5e-4
  c.schedule = "linear"
  c.warmup_steps = 100
  c.weight_decay = 0.01
  c.eval_every = 400
  c.checkpoint_every = 400
  c.eval_batch_size = 32
  return c
