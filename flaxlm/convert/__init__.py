"""Hugging Face interop: import a local transformers model folder into flaxlm, export a flaxlm
model (and its tokenizer) as one, and the 'hf' tokenizer kind.

  imported = flaxlm.convert.load_hf("path/to/hf_model")   # -> Imported(family, model_config,
                                                           #    params, tokenizer, ...)
  flaxlm.convert.export_hf("out_dir", "bert", config, params, tokenizer, task="sequence",
                           labels=["neg", "pos"])

  python -m flaxlm.convert import <hf_dir> [<out.json>]
  python -m flaxlm.convert export <flaxlm workdir> <hf_dir> [--task=bare]

Covered: GPT-2, LLaMA-style decoders (and Mistral without a sliding window), BERT, RoBERTa
(also bare sentence-transformers BERTs), T5 v1.0 / v1.1 (and mT5). Weights are read only from
safetensors. Hugging Face parameter names live only in this package: one converter module
per family (gpt2.py, llama.py, bert.py, t5.py).
"""

from flaxlm.convert.api import Imported, architecture, export_hf, load_hf
from flaxlm.convert.tokenizer import HFTokenizer

__all__ = ["HFTokenizer", "Imported", "architecture", "export_hf", "load_hf"]
