"""CMRC 2018 Chinese extractive QA with a flaxlm-pretrained BERT (configs/bert_zh.py): the
hidden states of [CLS] question [SEP] passage window [SEP] into start / end logits.

  python train.py --config=configs/bert_zh.py --workdir=/tmp/bert_zh   # once
  python finetune.py --config=configs/finetune_cmrc2018.py --workdir=/tmp/cmrc2018

Data: ../shared/data/cmrc2018/cmrc2018_trial.json (1,002 questions) to train and
cmrc2018_dev.json (3,219 questions, several answers each) to evaluate, SQuAD format.
Passages are cut into 384-token windows overlapping by 128; answers at most 30 characters.
Exact match and F1 as the official SQuAD v1.1 script, Chinese scored character by character
(CMRC 2018's mixed segmentation).
Hardware: 2 CPU cores, ~3 s a step: 784 steps (2,090 windows x 6 epochs) took 66 minutes
with two dev passes, 79 for the command (measured 2026-12-02). Result: exact match 0.37%,
F1 9.07 on the dev set: the path works on Chinese end to end, but a 31-minute backbone on
classical verse and 1,002 training questions answer poorly (README, Fine-tuning results).
"""

from flaxlm.config.finetuning import finetune_config, task_block

SHARED = "../shared/data/cmrc2018/"


def get_config():
  c = finetune_config()
  c.init_from = "/tmp/bert_zh"
  c.init_from_command = "python train.py --config=configs/bert_zh.py --workdir=/tmp/bert_zh"
  c.model.dropout_rate = 0.1
  c.task = task_block("qa")
  c.task.max_len = 384
  c.task.doc_stride = 128
  c.task.max_answer_len = 30
  c.train_data = "squad:" + SHARED + "cmrc2018_trial.json"
  c.eval_data = "squad:" + SHARED + "cmrc2018_dev.json"
  c.batch_size = 16
  c.num_epochs = 6.0
  c.learning_rate = 3e-4
  c.schedule = "linear"
  c.warmup_steps = 50
  c.weight_decay = 0.01
  c.eval_every = 400  # a dev pass took ~12 min here (before the 2.1x one-call eval)
  c.checkpoint_every = 200
  c.eval_batch_size = 32
  return c
