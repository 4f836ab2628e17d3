"""A decoder fine-tuned with LoRA as a user runs it: train.py pretrains a tiny LLaMA-style
GPT, finetune.py instruction-tunes it with adapters on every linear layer, generate.py decodes
from the LoRA workdir (float and int8), and `python -m flaxlm.convert export` writes it merged and as peft
adapters; transformers (merged) and transformers + peft (the exported base + the adapters)
give flaxlm's logits."""

import json

import numpy as np
import pytest

from flaxlm.finetuning import load as finetuned

LLAMA = ("--config.model.position=rope", "--config.model.norm=rmsnorm",
         "--config.model.gated_mlp=True", "--config.model.use_bias=False")  # fmt: skip

FINETUNE = """
from flaxlm.config.finetuning import finetune_config, task_block

def get_config():
  c = finetune_config()
  c.init_from = {base!r}
  c.task = task_block("sft")
  c.task.max_len, c.task.pack, c.task.target_len, c.task.max_new_tokens = 64, 1, 8, 4
  c.train_data = c.eval_data = "jsonl:{data}"
  c.batch_size = c.eval_batch_size = 8
  c.num_train_steps = c.eval_every = c.checkpoint_every = 4
  c.learning_rate = 1e-2
  c.lora.rank, c.lora.alpha = 2, 4.0
  c.lora.targets = ".*/(query|key|value|out|wi|wi_up|wo)"
  return c
"""


@pytest.mark.slow
def test_decoder_sft_with_lora_generates_and_exports_for_transformers_and_peft(scripts, tmp_path):
  from hf_tiny import max_diff, torch, transformers

  peft = pytest.importorskip("peft")
  base, workdir = tmp_path / "base", tmp_path / "sft"
  done = scripts.run("train.py", f"--workdir={base}", "--config.num_train_steps=2", *LLAMA)
  assert done.returncode == 0, done.stderr[-3000:]
  data = tmp_path / "sft.jsonl"
  rows = [{"prompt": f"say {w}", "response": w} for w in ("hi", "yes", "no", "ok")] * 4
  data.write_text("".join(json.dumps(r) + "\n" for r in rows))
  (tmp_path / "sft.py").write_text(FINETUNE.format(base=str(base), data=data))
  done = scripts.run("finetune.py", f"--config={tmp_path / 'sft.py'}", f"--workdir={workdir}",
                     tiny=False)  # fmt: skip
  assert done.returncode == 0, done.stderr[-3000:]
  done = scripts.run("generate.py", f"--workdir={workdir}", "--prompt=say hi", "--greedy",
                     "--max_new_tokens=4", tiny=False)  # fmt: skip
  assert done.returncode == 0 and done.stdout.strip(), done.stderr[-3000:]
  done = scripts.run("generate.py", f"--workdir={workdir}", "--prompt=say hi", "--greedy",
                     "--max_new_tokens=4", "--quantize=int8", tiny=False)  # fmt: skip
  assert done.returncode == 0, done.stderr[-3000:]
  line = done.stdout.splitlines()[0]  # adapters merged, then int8: its size and perplexity
  assert line.startswith("int8 weights: parameters") and "perplexity of the prompts" in line
  convert = ("-m", "flaxlm.convert", "export")
  for args in ((workdir, "merged"), (workdir, "adapters", "--adapters"), (base, "base_hf")):
    out = scripts.run((*convert, str(args[0]), str(tmp_path / args[1]), *args[2:]), tiny=False)
    assert out.returncode == 0, out.stderr[-3000:]

  model = finetuned.load(workdir)
  ids = np.asarray([model.tokenizer.encode("say yes and no")], np.int32)
  ours = np.asarray(model.trainable.model.apply({"params": model.params}, ids))
  merged = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "merged").eval()
  adapted = peft.PeftModel.from_pretrained(
    transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base_hf"), tmp_path / "adapters"
  ).eval()
  config = json.loads((tmp_path / "adapters" / "adapter_config.json").read_text())
  assert config["task_type"] == "CAUSAL_LM" and len(config["target_modules"]) == 7
  with torch.no_grad():
    for hf in (merged, adapted):
      theirs = hf(input_ids=torch.tensor(ids)).logits.numpy()
      assert max_diff(ours[..., : theirs.shape[-1]], theirs) <= 1e-4, type(hf).__name__
