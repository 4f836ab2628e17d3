"""flaxlm.models.param_trees: the declared layout of task models, and what rests on it: freeze_backbone
on every task kind (the backbone bit-identical after steps, no optimizer state) and the CLI
export of every fine-tuned task kind transformers has a class for (no missing or unexpected
weights, equal logits)."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from flaxlm.config import finetuning as config_finetune
from flaxlm.finetuning import load as finetuned
from flaxlm.finetuning import run as finetuning
from flaxlm.models import param_trees, registry
from flaxlm.tasks import TASKS
from flaxlm.train.steps import Trainable


def test_every_task_declares_its_head_on_every_family():
  kinds = {name: {f: cls.head_for(registry.family_of(f)) for f in ("bert", "gpt", "encdec")}
           for name, cls in TASKS.items()}  # fmt: skip
  assert kinds["classification"] == {"bert": "sequence", "gpt": "sequence", "encdec": None}
  assert kinds["relation"] == kinds["classification"]
  assert kinds["token_classification"]["bert"] == "token" and kinds["qa"]["gpt"] == "span"
  assert kinds["seq2seq"] == kinds["sft"] == {"bert": None, "gpt": None, "encdec": None}


def test_split_and_merge_are_inverse_and_name_the_paths():
  tree = {"backbone": {"embed": {"embedding": 1}, "layers_0": {"kernel": 2}},
          "classifier": {"kernel": 3, "bias": 4}}  # fmt: skip
  layout = param_trees.Layout("sequence")
  backbone, head = layout.split(tree)
  assert set(head) == {("classifier", "kernel"), ("classifier", "bias")}
  assert layout.merge(backbone, head) == tree
  assert layout.backbone(tree) is tree["backbone"]
  assert layout.backbone_path(("embed", "embedding")) == ("backbone", "embed", "embedding")
  lm = param_trees.Layout(None)
  gpt = {"embed": {"embedding": 1}, "lm_head": {"kernel": 2}}
  t5 = {"decoder": {"lm_head": {"kernel": 1}, "ln": {"scale": 2}}}
  assert [lm.is_head(k) for k in traverse_util.flatten_dict(gpt)] == [False, True]
  assert [lm.is_head(k) for k in traverse_util.flatten_dict(t5)] == [True, False]
  assert lm.backbone(gpt) is gpt and lm.backbone_path(("embed",)) == ("embed",)


# --- tiny runs of every task kind ---------------------------------------------------------------

GPT = dict(num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32, max_len=64, tie_embeddings=False)
T5 = dict(num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32, head_dim=8,
          tie_embeddings=False, scale_tied_logits=False)  # fmt: skip
WORDS = ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb"]
TAGS = ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O"]
QA = {"question": "who rejects?", "context": "the EU rejects it", "id": "1",
      "answers": [{"text": "EU", "answer_start": 4}]}  # fmt: skip

# name -> (task, family, model block, records, task fields)
RUNS = {
  "token_gpt": ("token_classification", "gpt", GPT, [{"words": WORDS, "tags": TAGS}] * 16, {"max_len": 32}),
  "qa_gpt": ("qa", "gpt", GPT, [QA] * 16, {"max_len": 48, "doc_stride": 8, "max_question_len": 16}),
  "sft_gpt": ("sft", "gpt", GPT, [{"prompt": "say hi", "response": "hi"}] * 16, {"max_len": 64, "pack": 1, "target_len": 8, "max_new_tokens": 2}),
  "seq2seq_gpt": ("seq2seq", "gpt", GPT, [{"text": "abc", "target": "cba"}] * 16, {"max_len": 16, "target_len": 8, "beam_size": 0, "max_new_tokens": 2}),
  "seq2seq_t5": ("seq2seq", "encdec", T5, [{"text": "abc", "target": "cba"}] * 16, {"max_len": 16, "target_len": 8, "beam_size": 0, "max_new_tokens": 2}),
  "labels_t5": ("classification", "encdec", T5, [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}] * 8, {"max_len": 16}),
}  # fmt: skip


def run_config(tmp, name, **overrides):
  task, family, model, records, fields = RUNS[name]
  c = config_finetune.finetune_config()
  config_finetune.with_model_preset(c, family, "tiny" if family == "gpt" else "t5_tiny")
  c.model.update(model)
  c.tokenizer.kind = "byte"
  c.task = config_finetune.task_block(task)
  c.task.update(fields)
  path = tmp / f"{name}.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  c.train_data = c.eval_data = f"jsonl:{path}"
  c.max_eval_examples = 8
  c.batch_size = c.eval_batch_size = 8
  c.learning_rate, c.warmup_steps = 1e-2, 0
  c.num_train_steps, c.eval_every, c.checkpoint_every = 2, 0, 2
  c.update(overrides)
  return c


@pytest.mark.parametrize("name", sorted(RUNS))
def test_freeze_backbone_on_every_task_kind(name, tmp_path, monkeypatch):
  """The backbone is bit-identical after two steps and has no optimizer state; the head
  (a task head, or the family's untied LM head) trains."""
  seen = {}
  real = Trainable.init_state

  def spy(self, seed, overrides=None):
    seen["init"] = jax.device_get((state := real(self, seed, overrides)).params)
    return state

  monkeypatch.setattr(Trainable, "init_state", spy)
  c = run_config(tmp_path, name, freeze_backbone=True)
  model = finetuning.train(config_finetune.from_config_dict(c), tmp_path / "workdir")["model"]
  layout = model.task.layout
  (before, head_before), (after, head_after) = (
    layout.split(p) for p in (seen["init"], jax.device_get(model.params))
  )
  assert head_after and before.keys() == after.keys()
  for path in before:
    np.testing.assert_array_equal(after[path], before[path], err_msg="/".join(path))
  assert any(not np.array_equal(head_after[k], head_before[k]) for k in head_before)
  head_size = sum(v.size for v in head_after.values())
  opt_size = sum(x.size for x in jax.tree.leaves(model.trainable.abstract_state.opt_state))
  assert model.trainable.num_trainable == head_size
  assert opt_size <= 2 * head_size + 8  # Adam's two moments of the head, a few counters


# --- CLI export of every task kind transformers has a class for -------------------------------

EXPORTS = {"token_gpt": "GPT2ForTokenClassification", "qa_gpt": "GPT2ForQuestionAnswering",
           "sft_gpt": "GPT2LMHeadModel", "seq2seq_t5": "T5ForConditionalGeneration"}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_cli_export_of_every_task_kind_loads_with_equal_logits(name, tmp_path):
  from hf_tiny import ATOL, loads_cleanly, max_diff, torch

  from flaxlm.convert.__main__ import main

  c = run_config(tmp_path, name)
  finetuning.train(config_finetune.from_config_dict(c), tmp_path / "workdir")
  main(["export", str(tmp_path / "workdir"), str(tmp_path / "hf")])
  hf = loads_cleanly(EXPORTS[name], tmp_path / "hf")
  model = finetuned.load(tmp_path / "workdir")
  ids = np.asarray([model.tokenizer.encode("the EU rejects")], np.int32)
  batch = {"inputs": ids, "segment_ids": np.ones_like(ids), "type_ids": np.zeros_like(ids)}
  apply = lambda *a, **k: model.trainable.model.apply({"params": model.params}, *a, **k)
  if name == "seq2seq_t5":
    target = ids[:, :5]
    ours = apply(ids, target)
    theirs = hf(input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(target)).logits
  elif name == "sft_gpt":
    ours, theirs = apply(ids), hf(input_ids=torch.tensor(ids)).logits
  elif name == "qa_gpt":
    ours, out = apply(batch), hf(input_ids=torch.tensor(ids))
    theirs = torch.stack([out.start_logits, out.end_logits], -1)
  else:
    ours, theirs = apply(batch), hf(input_ids=torch.tensor(ids)).logits
  assert max_diff(ours, theirs) <= ATOL
