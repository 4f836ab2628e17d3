"""Starting a fine-tuning model from pretrained weights (`config.init_from`).

A flaxlm pretraining workdir gives its newest checkpoint's model family, architecture,
tokenizer and parameters; 'hf:<dir>' gives the same from a Hugging Face model folder
(`flaxlm.convert.load_hf`). The parameters become the task model's 'backbone' subtree, bit
for bit; the head starts fresh. The pretraining heads that a task does not use (BERT's MLM and
NSP heads, an untied LM head) are left out and listed; a backbone parameter the checkpoint
lacks, or one of another shape, fails with the paths.
"""

from __future__ import annotations

import dataclasses
import logging

from flax import traverse_util

from flaxlm.errors import CheckpointMismatchError, DataNotFoundError
from flaxlm.models.param_trees import Layout
from flaxlm.nn import lora
from flaxlm.workdir import Workdir

log = logging.getLogger("flaxlm")


@dataclasses.dataclass
class Pretrained:
  family: str
  model_config: object  # the family's frozen config
  tokenizer: object
  params: dict  # the backbone's parameter tree (device arrays)
  source: str


def load(init_from: str, mesh, hint: str = "") -> Pretrained:
  """The pretrained backbone named by `init_from` (a pretraining workdir, or 'hf:<dir>': a
  Hugging Face model folder, imported by flaxlm.convert), on `mesh`."""
  from flaxlm.pretraining.load import load_trained, saved_family

  if init_from.startswith("hf:"):
    from flaxlm.convert import load_hf

    return from_imported(load_hf(init_from[len("hf:") :]), init_from)

  workdir = Workdir(init_from)
  if not workdir.checkpoints.exists() or not any(workdir.checkpoints.iterdir()):
    fix = f"; create it with: {hint}" if hint else "; train one with train.py first"
    raise DataNotFoundError(f"init_from={init_from!r} holds no pretraining checkpoint{fix}")
  trainable, params, tokenizer = load_trained(workdir, mesh)
  family = saved_family(workdir)
  return Pretrained(family, trainable.model.config, tokenizer, params, str(workdir.path))


def from_imported(imported, source: str) -> Pretrained:
  """The backbone of a Hugging Face folder imported by `flaxlm.convert.load_hf`."""
  return Pretrained(
    imported.family, imported.model_config, imported.tokenizer, imported.backbone, source
  )


def backbone_overrides(abstract_params: dict, pretrained: Pretrained, layout: Layout) -> dict:
  """{flattened path in the task model: pretrained array} for every backbone parameter
  (`layout`: the task's tree; a generative task takes the family's LM head too).

  Raises with the missing and mismatched paths; logs the unused pretraining parameters."""
  want = {
    k: v
    for k, v in traverse_util.flatten_dict(layout.backbone(abstract_params)).items()
    if not lora.is_adapter(k)
  }  # fmt: skip - adapters start fresh (nn/lora.py)
  have = traverse_util.flatten_dict(pretrained.params)
  missing = sorted("/".join(k) for k in want if k not in have)
  mismatched = sorted(
    f"{'/'.join(k)}: checkpoint {tuple(have[k].shape)} vs model {tuple(v.shape)}"
    for k, v in want.items()
    if k in have and tuple(have[k].shape) != tuple(v.shape)
  )
  unused = sorted("/".join(k) for k in have if k not in want)
  if missing or mismatched:
    raise CheckpointMismatchError(
      f"init_from={pretrained.source}: its parameters do not fit the task's backbone; missing "
      f"{missing[:8]}{' ...' if len(missing) > 8 else ''}, shape-mismatched {mismatched[:8]}, "
      f"unexpected {unused[:8]}{' ...' if len(unused) > 8 else ''}"
    )
  if unused:
    log.info("init_from: %d pretraining parameters not used by the task: %s", len(unused), unused)
  return {layout.backbone_path(k): have[k] for k in want}


def all_params(pretrained: Pretrained) -> dict:
  """{flattened path: array} of every parameter (continued pretraining takes them all)."""
  return dict(traverse_util.flatten_dict(pretrained.params))
