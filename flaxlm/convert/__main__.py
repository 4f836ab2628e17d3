"""The command line of flaxlm.convert.

python -m flaxlm.convert import <hf_dir> [<out.json>] [--pad_vocab_to=N]
    Imports a Hugging Face model folder and prints what it became; with <out.json>, writes
    {"model_family", "architecture", "model", "tokenizer", "task", "labels", "initialized"}
    (the model config and tokenizer as flaxlm checkpoints store them).
python -m flaxlm.convert export <flaxlm workdir> <hf_dir> [--task=bare]
    Writes the newest checkpoint of a pretraining workdir (its language-model head, or the
    bare backbone with --task=bare), or the best checkpoint of a fine-tuning workdir (its
    task head and labels), as a Hugging Face model folder with its tokenizer. A LoRA
    fine-tune is written with its adapters merged into the weights; with --adapters, only
    the adapters and saved modules, in peft's format (adapter_config.json,
    adapter_model.safetensors) for peft.PeftModel.from_pretrained(<its base>, <hf_dir>).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax

from flaxlm import cli


def _import(args) -> None:
  from flaxlm.convert import load_hf

  imported = load_hf(args.hf_dir, pad_vocab_to=args.pad_vocab_to)
  count = sum(x.size for x in jax.tree.leaves(imported.params))
  print(
    f"{args.hf_dir}: {imported.architecture} -> flaxlm {imported.family} "
    f"({count / 1e6:.2f}M parameters{', task ' + imported.task if imported.task else ''}; "
    f"tokenizer: {'hf' if imported.tokenizer else 'none'}; "
    f"freshly initialized: {imported.initialized or 'none'})"
  )
  print(json.dumps(dataclasses.asdict(imported.model_config)))
  if args.out:
    summary = {
      "model_family": imported.family,
      "architecture": imported.architecture,
      "model": dataclasses.asdict(imported.model_config),
      "tokenizer": imported.tokenizer.to_json() if imported.tokenizer else None,
      "task": imported.task,
      "labels": imported.labels,
      "initialized": imported.initialized,
    }
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(summary, f)


def _export(args) -> None:
  from flaxlm.convert import export_hf
  from flaxlm.finetuning import load as finetuned
  from flaxlm.nn import lora
  from flaxlm.pretraining import load as pretrained

  if args.adapters:
    return _export_adapters(args)
  if finetuned.workdir_kind(args.workdir) == "finetune":
    model = finetuned.load(args.workdir)
    task = model.task.layout.head  # None: the family's LM head (SFT, seq2seq, text labels)
    # LoRA adapters folded into their kernels: an ordinary model transformers loads.
    params, labels = lora.merged(jax.device_get(model.params), model.lora), model.task.labels
    family, config, tokenizer = model.family, model.model_config, model.tokenizer
  else:
    trainable, params, tokenizer = pretrained.load_trained(args.workdir)
    family = pretrained.saved_family(args.workdir)
    config, task, labels = trainable.model.config, args.task, None
  class_name = export_hf(args.hf_dir, family, config, params, tokenizer, task=task, labels=labels)
  print(f"{args.workdir} -> {args.hf_dir} ({class_name})")


def _export_adapters(args) -> None:
  from flaxlm.convert import peft
  from flaxlm.errors import ConfigError
  from flaxlm.finetuning import load as finetuned
  from flaxlm.nn import lora

  if finetuned.workdir_kind(args.workdir) != "finetune":
    raise ConfigError(f"--adapters: {args.workdir} is not a fine-tuning run")
  model = finetuned.load(args.workdir)
  if not model.lora.rank:
    raise ConfigError(f"--adapters: {args.workdir} trained no LoRA adapters (lora.rank=0)")
  frozen = model.trainable.frozen_paths
  config = peft.export_adapters(
    args.hf_dir,
    model.family,
    model.model_config,
    model.params,
    model.lora,
    trained=lambda path: path not in frozen and not lora.is_adapter(path),
    tokenizer=model.tokenizer,
    task=model.task.layout.head,
    base=model.init_from.removeprefix("hf:"),
  )
  print(
    f"{args.workdir} -> {args.hf_dir} (peft LoRA adapters, rank {config['r']}, on "
    f"{len(config['target_modules'])} projections; saved modules: {config['modules_to_save']})"
  )


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    prog="python -m flaxlm.convert",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  commands = parser.add_subparsers(dest="command", required=True)
  p = commands.add_parser("import", help="a Hugging Face folder -> flaxlm (checked, summarized)")
  p.add_argument("hf_dir")
  p.add_argument("out", nargs="?", help="write the model config and tokenizer as JSON here")
  p.add_argument("--pad_vocab_to", type=int, default=1)
  p = commands.add_parser("export", help="a flaxlm workdir -> a Hugging Face folder")
  p.add_argument("workdir")
  p.add_argument("hf_dir")
  p.add_argument("--task", default=None, choices=["bare"], help="pretraining runs: bare backbone")
  p.add_argument(
    "--adapters",
    action="store_true",
    help="a LoRA fine-tune: its adapters in peft's format instead of the merged model",
  )
  args = parser.parse_args(argv)
  cli.setup_logging()
  with cli.user_errors("flaxlm.convert"):
    _import(args) if args.command == "import" else _export(args)


if __name__ == "__main__":
  main()
