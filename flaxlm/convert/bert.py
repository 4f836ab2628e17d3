"""BERT and RoBERTa (`model_type: bert | roberta`) <-> flaxlm's `BertConfig` (post-LN).

Owns the name map between transformers' Bert* / Roberta* models (bare, masked LM, BERT's
pre-training heads, and the sequence classification, token classification and span QA
heads) and flaxlm's Bert tree, plus the two places where the layouts differ:
  - RoBERTa numbers positions from padding_idx + 1 (= 2): flaxlm's learned positions start
    at 0, so import takes table rows 2: and export puts padding_idx + 1 zero rows back.
  - With one token type (RoBERTa) transformers still adds token_type_embeddings[0] to every
    token; flaxlm has no type table then, so that row is folded into every position row
    (export writes a zero type row).
RoBERTa's classification head (dense + tanh on <s>, then out_proj) is flaxlm's pooler +
classifier. Checkpoints saved from a bare BertModel (sentence-transformers) have no `bert.`
prefix. Missing pooler or MLM weights are freshly initialized by the caller and listed.
"""

from __future__ import annotations

import numpy as np

from flaxlm.convert import options
from flaxlm.convert.tree import (
  Converted,
  Weights,
  dense,
  head_in,
  head_out,
  norm,
  out_from_heads,
  out_to_heads,
  pad_rows,
  to_heads,
)
from flaxlm.errors import ConfigError
from flaxlm.models.bert import BertConfig

FAMILY, MODEL_TYPES = "bert", ("bert", "roberta")
CLASSES = {
  arch: {
    None: f"{name}ForMaskedLM",
    "bare": f"{name}Model",
    "sequence": f"{name}ForSequenceClassification",
    "token": f"{name}ForTokenClassification",
    "span": f"{name}ForQuestionAnswering",
  }
  for arch, name in (("bert", "Bert"), ("roberta", "Roberta"))
}
CLASSES["bert"]["nsp"] = "BertForPreTraining"  # MLM + next-sentence heads
LAYER = {  # flaxlm norm -> HF LayerNorm, per block
  "ln_attn": "attention.output.LayerNorm",
  "ln_mlp": "output.LayerNorm",
}


def fits(c) -> bool:
  return isinstance(c, BertConfig)


def _task(hf: dict, tensors: dict) -> str | None:
  if "qa_outputs.weight" in tensors:
    return "span"
  if "classifier.dense.weight" in tensors:  # RoBERTa's classification head
    return "sequence"
  if "classifier.weight" not in tensors:
    return None
  arch = (hf.get("architectures") or [""])[0]
  for task, suffix in (("token", "TokenClassification"), ("sequence", "SequenceClassification")):
    if arch.endswith(suffix):
      return task
  # Without a class name: BertForSequenceClassification keeps its pooler, the token head not.
  return "sequence" if any(k.endswith("pooler.dense.weight") for k in tensors) else "token"


def import_checkpoint(hf: dict, tensors: dict, vocab: int) -> Converted:
  arch = hf["model_type"]
  options.require(
    hf,
    "position_embedding_type",
    ("absolute",),
    "absolute",
    "flaxlm's BERT has learned absolute positions",
  )
  options.require(hf, "is_decoder", (False,), False, "flaxlm's BERT is an encoder")
  options.require(
    hf, "add_cross_attention", (False,), False, "flaxlm's BERT has no cross-attention"
  )
  d, n, num_layers = hf["hidden_size"], hf["num_attention_heads"], hf["num_hidden_layers"]
  task = _task(hf, tensors)
  prefix = f"{arch}." if any(k.startswith(f"{arch}.") for k in tensors) else ""
  w = Weights(tensors, prefix)
  e = "embeddings."
  embed = w.take(e + "word_embeddings.weight")
  positions = w.take(e + "position_embeddings.weight")
  if arch == "roberta":  # HF position ids start at padding_idx + 1
    pad = hf.get("pad_token_id")
    positions = positions[(1 if pad is None else pad) + 1 :]
  types = w.take(e + "token_type_embeddings.weight")
  if types.shape[0] == 1:
    positions = positions + types[0]  # one token type: added to every token, like a position
  nsp = w.has("cls.seq_relationship.weight", base=False)
  config = BertConfig(
    vocab_size=vocab,
    num_layers=num_layers,
    num_heads=n,
    embed_dim=d,
    mlp_dim=hf["intermediate_size"],
    max_len=positions.shape[0],
    dropout_rate=float(hf.get("hidden_dropout_prob", 0.1)),
    norm_eps=hf.get("layer_norm_eps", 1e-12),
    activation=options.activation(hf, "hidden_act", "gelu"),
    type_vocab_size=types.shape[0],
    nsp_head=nsp,
  )
  params = {
    "embed": {"embedding": pad_rows(embed, vocab)},
    "pos_embed": {"embedding": positions},
    "ln_embed": norm(w.take(e + "LayerNorm.weight"), w.take(e + "LayerNorm.bias")),
  }
  if types.shape[0] > 1:
    params["type_embed"] = {"embedding": types}
  for i in range(num_layers):
    p = f"encoder.layer.{i}."
    attn = {
      k: {
        "kernel": to_heads(w.take(f"{p}attention.self.{k}.weight"), n),
        "bias": w.take(f"{p}attention.self.{k}.bias").reshape(n, -1),
      }
      for k in ("query", "key", "value")
    }
    attn["out"] = {
      "kernel": out_to_heads(w.take(p + "attention.output.dense.weight"), n),
      "bias": w.take(p + "attention.output.dense.bias"),
    }
    layer = {"attn": attn, "mlp": {}}
    for ours, theirs in LAYER.items():
      layer[ours] = norm(w.take(f"{p}{theirs}.weight"), w.take(f"{p}{theirs}.bias"))
    for ours, theirs in (("wi", "intermediate.dense"), ("wo", "output.dense")):
      layer["mlp"][ours] = dense(w.take(f"{p}{theirs}.weight"), w.take(f"{p}{theirs}.bias"))
    params[f"layers_{i}"] = layer
  if w.has("pooler.dense.weight"):
    params["pooler"] = dense(w.take("pooler.dense.weight"), w.take("pooler.dense.bias"))
  params.update(_import_lm_heads(w, arch, embed, vocab))
  if task == "sequence" and arch == "roberta":
    params["pooler"] = head_in(w, "classifier.dense")
    params = {"backbone": params, "classifier": head_in(w, "classifier.out_proj")}
  elif task:
    name = "qa_outputs" if task == "span" else "classifier"
    params = {"backbone": params, name: head_in(w, name)}
  w.skip_buffers("position_ids", "token_type_ids")
  return Converted(config, params, task, w.leftover())


def _import_lm_heads(w: Weights, arch: str, embed: np.ndarray, vocab: int) -> dict:
  """The MLM head (and BERT's NSP head) where the checkpoint has them."""
  out = {}
  if w.has("cls.seq_relationship.weight", base=False):
    out["nsp"] = head_in(w, "cls.seq_relationship")
  head = "cls.predictions." if arch == "bert" else "lm_head."
  dense_name, norm_name = (
    ("transform.dense", "transform.LayerNorm") if arch == "bert" else ("dense", "layer_norm")
  )
  if not w.has(head + "bias", base=False):
    return out
  bias = w.take(head + "bias", base=False)
  w.take_copy(head + "decoder.weight", embed, base=False)  # tied to the word embeddings
  w.take_copy(head + "decoder.bias", bias, base=False)
  out["mlm_dense"] = head_in(w, head + dense_name)
  out["mlm_ln"] = norm(
    w.take(f"{head}{norm_name}.weight", False), w.take(f"{head}{norm_name}.bias", False)
  )
  out["mlm_bias"] = pad_rows(bias, vocab)
  return out


def export_checkpoint(c: BertConfig, params: dict, task, vocab: int, arch: str, pad_id):
  """(config.json fields, {HF name: array}) for CLASSES[arch][task]; `vocab` rows are kept."""
  options.check_export(
    c,
    arch,
    position="learned",
    norm="layernorm",
    norm_position="post",
    gated_mlp=False,
    use_bias=True,
    kv_heads=c.num_heads,
  )
  backbone = params.get("backbone", params)
  if task is None and "mlm_dense" not in backbone:
    raise ConfigError("these parameters have no MLM head; export them with task='bare'")
  if task is None and c.nsp_head and arch == "roberta":
    raise ConfigError("RoBERTa has no next-sentence head; export this model as 'bert'")
  pad = pad_id if pad_id is not None else (1 if arch == "roberta" else 0)
  positions = backbone["pos_embed"]["embedding"]
  if arch == "roberta":  # rows 0 .. padding_idx are never read for real tokens
    positions = np.concatenate([np.zeros((pad + 1, c.embed_dim), np.float32), positions])
  e = "embeddings."
  out = {
    e + "word_embeddings.weight": backbone["embed"]["embedding"][:vocab],
    e + "position_embeddings.weight": positions,
    e + "token_type_embeddings.weight": backbone["type_embed"]["embedding"]
    if c.type_vocab_size > 1
    else np.zeros((1, c.embed_dim), np.float32),
    e + "LayerNorm.weight": backbone["ln_embed"]["scale"],
    e + "LayerNorm.bias": backbone["ln_embed"]["bias"],
  }
  for i in range(c.num_layers):
    layer, p = backbone[f"layers_{i}"], f"encoder.layer.{i}."
    for k in ("query", "key", "value"):
      out[f"{p}attention.self.{k}.weight"] = layer["attn"][k]["kernel"].reshape(c.embed_dim, -1).T
      out[f"{p}attention.self.{k}.bias"] = layer["attn"][k]["bias"].reshape(-1)
    out[p + "attention.output.dense.weight"] = out_from_heads(layer["attn"]["out"]["kernel"])
    out[p + "attention.output.dense.bias"] = layer["attn"]["out"]["bias"]
    for ours, theirs in LAYER.items():
      out[f"{p}{theirs}.weight"], out[f"{p}{theirs}.bias"] = (
        layer[ours]["scale"],
        layer[ours]["bias"],
      )
    for ours, theirs in (("wi", "intermediate.dense"), ("wo", "output.dense")):
      out.update(head_out(layer["mlp"][ours], p + theirs))
  # transformers builds a pooler only into the bare model, BertForPreTraining and
  # BertForSequenceClassification; RoBERTa's sequence head holds it as classifier.dense.
  nsp = task is None and c.nsp_head
  if task == "bare" or nsp or (task == "sequence" and arch == "bert"):
    out.update(head_out(backbone["pooler"], "pooler.dense"))
  tensors = {("" if task == "bare" else f"{arch}.") + k: v for k, v in out.items()}
  if task is None:
    tensors.update(_export_lm_heads(backbone, arch, vocab, nsp))
  elif task == "sequence" and arch == "roberta":
    tensors.update(head_out(backbone["pooler"], "classifier.dense"))
    tensors.update(head_out(params["classifier"], "classifier.out_proj"))
  elif task != "bare":
    name = "qa_outputs" if task == "span" else "classifier"
    tensors.update(head_out(params[name], name))
  config = {
    "model_type": arch,
    "vocab_size": vocab,
    "hidden_size": c.embed_dim,
    "num_hidden_layers": c.num_layers,
    "num_attention_heads": c.num_heads,
    "intermediate_size": c.mlp_dim,
    "hidden_act": options.TO_HF[c.activation],
    "hidden_dropout_prob": c.dropout_rate,
    "attention_probs_dropout_prob": c.dropout_rate,  # flaxlm has none; BERT's usual equal rate
    "max_position_embeddings": positions.shape[0],
    "type_vocab_size": max(c.type_vocab_size, 1),
    "layer_norm_eps": c.norm_eps,
    "pad_token_id": pad,
  }
  return config, tensors


def _export_lm_heads(backbone: dict, arch: str, vocab: int, nsp: bool) -> dict:
  head = "cls.predictions." if arch == "bert" else "lm_head."
  dense_name, norm_name = (
    ("transform.dense", "transform.LayerNorm") if arch == "bert" else ("dense", "layer_norm")
  )
  out = head_out(backbone["mlm_dense"], head + dense_name)
  out[f"{head}{norm_name}.weight"] = backbone["mlm_ln"]["scale"]
  out[f"{head}{norm_name}.bias"] = backbone["mlm_ln"]["bias"]
  out[head + "bias"] = backbone["mlm_bias"][:vocab]
  if nsp:
    out.update(head_out(backbone["nsp"], "cls.seq_relationship"))
  return out
