"""QLoRA of configs/llama_1b.py (852.6M parameters, LLaMA-style) on DialogSum instruction
tuning: the base frozen in nf4 (4-bit, a scale per 128 input rows), rank-16 adapters on every
projection of the 16 blocks and nothing else trained, bf16 compute, rows of 1,024 tokens. A single-GPU recipe: one
device holds the whole model.

Plan the memory first (no accelerator, no weights needed: a fresh model of the same shapes,
the records read for their lengths):
  python finetune.py --config=configs/finetune_dialogsum_llama_1b_qlora.py --workdir=/tmp/q1b \
      --dry_run
  ... --config.lora.quantize_base=int8      # QLoRA over an int8 base
  ... --config.lora.rank=0                  # full fine-tuning, for comparison
README (Memory) gives what each prints.

A real run starts from pretrained weights of this shape: --config.init_from=<a train.py
workdir of configs/llama_1b.py> or hf:<a Hugging Face LLaMA folder> (their tokenizer then
replaces the byte-level one below, which only sizes nothing: the vocabulary is llama_1b's
32,000 rows either way).
Not run here: 2 CPU cores, no accelerator; no step of it has been timed on hardware.
"""

import pathlib
import runpy

_here = pathlib.Path(__file__)
# DialogSum's SFT task, data and columns (configs/finetune_dialogsum_sft.py) on llama_1b's
# model block (configs/llama_1b.py: bf16, no dropout, minimal remat)
_sft = runpy.run_path(str(_here.with_name("finetune_dialogsum_sft.py")))
_llama = runpy.run_path(str(_here.with_name("llama_1b.py")))


def get_config():
  c = _sft["get_config"]()
  c.init_from, c.init_from_command = "", ""
  c.model_family = "gpt"
  c.model = _llama["get_config"]().model
  c.model.vocab_size = 32000  # the byte tokenizer below would size it to 256
  c.model.num_vocab_tiles = 4  # 1,024 / 4 = 256 positions of logits at a time
  c.tokenizer.kind = "byte"
  c.task.max_len = 1024
  c.task.pack = 4
  c.lora.rank = 16
  c.lora.alpha = 32.0
  c.lora.targets = ".*/(query|key|value|out|wi|wi_up|wo)"
  c.lora.quantize_base = "nf4"
  c.lora.modules_to_save = "(?!)"  # none: the LM head is pretrained, adapters alone train
  c.batch_size = 8
  c.accum_steps = 2
  c.num_train_steps = 1000
  c.learning_rate = 2e-4
  c.warmup_steps = 50
  c.eval_every = 500
  c.eval_batch_size = 8
  return c
