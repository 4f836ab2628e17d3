"""flaxlm.models.param_trees: the declared layout of task models, and what rests on it: freeze_backbone
on every task kind (the backbone bit-identical after steps, no optimizer state) and the CLI
export of every fine-tuned task kind transformers has a class for (no missing or unexpected
weights, equal logits)."""

import jax
import numpy as np
import pytest
from flax import traverse_util
from samples import RUNS, run_config, trained_from

from flaxlm.config import finetuning as config_finetune
from flaxlm.finetuning import load as finetuned
from flaxlm.finetuning import run as finetuning
from flaxlm.models import param_trees, registry
from flaxlm.tasks import TASKS


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


@pytest.mark.parametrize("name", sorted(RUNS))
def test_freeze_backbone_on_every_task_kind(name, tmp_path, monkeypatch):
  """The backbone is bit-identical after two steps and has no optimizer state; the head
  (a task head, or the family's untied LM head) trains."""
  c = run_config(tmp_path, name, freeze_backbone=True)
  init, model = trained_from(c, tmp_path / "workdir", monkeypatch)
  layout = model.task.layout
  (before, head_before), (after, head_after) = (
    layout.split(p) for p in (init, jax.device_get(model.params))
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
