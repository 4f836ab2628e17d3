"""GPT-2 (`model_type: gpt2`) <-> flaxlm's `GPTConfig` with learned positions.

Owns the name map between transformers' GPT2Model / GPT2LMHeadModel (and the token
classification and span QA heads) and flaxlm's GPT tree. GPT-2's `Conv1D` stores (in, out),
so its kernels need no transpose; q, k and v share one `c_attn` (D, 3D). GPT-2's attention
scale options (`scale_attn_weights=False`, `scale_attn_by_inverse_layer_idx`) are folded into
the query kernel, since flaxlm always divides q.k by sqrt(H).
"""

from __future__ import annotations

import numpy as np

from flaxlm.convert import options
from flaxlm.convert.tree import Converted, Weights, head_in, head_out, lm_head, norm, pad_rows
from flaxlm.errors import ConfigError
from flaxlm.models.gpt import GPTConfig

ARCH, FAMILY, MODEL_TYPES = "gpt2", "gpt", ("gpt2",)
CLASSES = {
  None: "GPT2LMHeadModel",
  "bare": "GPT2Model",
  "token": "GPT2ForTokenClassification",
  "span": "GPT2ForQuestionAnswering",
}
HEADS = {"token": "classifier", "span": "qa_outputs"}  # flaxlm and HF use the same names


def fits(c) -> bool:
  return isinstance(c, GPTConfig) and c.position == "learned"


def import_checkpoint(hf: dict, tensors: dict, vocab: int) -> Converted:
  """`vocab`: the (padded) vocabulary size of the flaxlm model."""
  options.require(hf, "add_cross_attention", (False,), False, "flaxlm's GPT has no cross-attention")
  if "score.weight" in tensors:
    raise ConfigError(
      "GPT2ForSequenceClassification has no flaxlm counterpart (its head has no bias and reads "
      "the last non-pad token by pad_token_id); import the backbone from a GPT2Model folder"
    )
  d, n, num_layers = hf["n_embd"], hf["n_head"], hf["n_layer"]
  h = d // n
  w = Weights(tensors, "transformer." if any(k.startswith("transformer.") for k in tensors) else "")
  embed = w.take("wte.weight")
  tied, head = lm_head(hf, w, "lm_head.weight", embed)
  config = GPTConfig(
    vocab_size=vocab,
    num_layers=num_layers,
    num_heads=n,
    embed_dim=d,
    mlp_dim=hf.get("n_inner") or 4 * d,
    max_len=hf["n_positions"],
    dropout_rate=float(hf.get("resid_pdrop", 0.1)),
    norm_eps=hf.get("layer_norm_epsilon", 1e-5),
    activation=options.activation(hf, "activation_function", "gelu_new"),
    tie_embeddings=tied,
  )
  params = {
    "embed": {"embedding": pad_rows(embed, vocab)},
    "pos_embed": {"embedding": w.take("wpe.weight")},
    "ln_final": norm(w.take("ln_f.weight"), w.take("ln_f.bias")),
  }
  for i in range(num_layers):
    p = f"h.{i}."
    # HF scores q.k * H^-0.5 (or * 1 with scale_attn_weights off), / (i + 1) when scaled by
    # layer; flaxlm always uses H^-0.5, so q takes the rest as a factor s.
    s = 1.0 if hf.get("scale_attn_weights", True) else h**0.5
    if hf.get("scale_attn_by_inverse_layer_idx", False):
      s /= i + 1
    qkv_w = w.take(p + "attn.c_attn.weight").reshape(d, 3, n, h)  # (D, 3D) -> (D, 3, N, H)
    qkv_b = w.take(p + "attn.c_attn.bias").reshape(3, n, h)
    attn = {
      name: {
        "kernel": qkv_w[:, j] * (s if j == 0 else 1.0),
        "bias": qkv_b[j] * (s if j == 0 else 1.0),
      }
      for j, name in enumerate(("query", "key", "value"))
    }
    attn["out"] = {
      "kernel": w.take(p + "attn.c_proj.weight").reshape(n, h, d),  # (N*H, D) -> (N, H, D)
      "bias": w.take(p + "attn.c_proj.bias"),
    }
    params[f"layers_{i}"] = {
      "ln_attn": norm(w.take(p + "ln_1.weight"), w.take(p + "ln_1.bias")),
      "attn": attn,
      "ln_mlp": norm(w.take(p + "ln_2.weight"), w.take(p + "ln_2.bias")),
      "mlp": {
        "wi": {"kernel": w.take(p + "mlp.c_fc.weight"), "bias": w.take(p + "mlp.c_fc.bias")},
        "wo": {"kernel": w.take(p + "mlp.c_proj.weight"), "bias": w.take(p + "mlp.c_proj.bias")},
      },
    }
  if head is not None:
    params["lm_head"] = {"kernel": pad_rows(head, vocab).T}  # (V, D) -> (D, V)
  task = next((t for t, name in HEADS.items() if w.has(f"{name}.weight", base=False)), None)
  if task:
    params = {"backbone": params, HEADS[task]: head_in(w, HEADS[task])}
  w.skip_buffers(".attn.bias", ".attn.masked_bias")
  return Converted(config, params, task, w.leftover())


def export_checkpoint(c: GPTConfig, params: dict, task, vocab: int, arch: str, pad_id):
  """(config.json fields, {HF name: array}) for CLASSES[task]; `vocab` rows are kept."""
  del arch, pad_id  # one architecture; the pad id is not part of it
  options.check_export(
    c,
    ARCH,
    position="learned",
    norm="layernorm",
    norm_position="pre",
    gated_mlp=False,
    use_bias=True,
    kv_heads=c.num_heads,
  )
  backbone = params.get("backbone", params)
  d, n, h = c.embed_dim, c.num_heads, c.dim_per_head
  prefix = "" if task == "bare" else "transformer."
  out = {
    "wte.weight": backbone["embed"]["embedding"][:vocab],
    "wpe.weight": backbone["pos_embed"]["embedding"],
    "ln_f.weight": backbone["ln_final"]["scale"],
    "ln_f.bias": backbone["ln_final"]["bias"],
  }
  for i in range(c.num_layers):
    layer, p = backbone[f"layers_{i}"], f"h.{i}."
    a = layer["attn"]
    names = ("query", "key", "value")
    out[p + "attn.c_attn.weight"] = np.stack([a[k]["kernel"] for k in names], 1).reshape(d, 3 * d)
    out[p + "attn.c_attn.bias"] = np.stack([a[k]["bias"] for k in names]).reshape(3 * d)
    out[p + "attn.c_proj.weight"] = a["out"]["kernel"].reshape(n * h, d)
    out[p + "attn.c_proj.bias"] = a["out"]["bias"]
    for hf_name, ours in (("ln_1", "ln_attn"), ("ln_2", "ln_mlp")):
      out[p + hf_name + ".weight"] = layer[ours]["scale"]
      out[p + hf_name + ".bias"] = layer[ours]["bias"]
    for hf_name, ours in (("c_fc", "wi"), ("c_proj", "wo")):
      out[p + f"mlp.{hf_name}.weight"] = layer["mlp"][ours]["kernel"]
      out[p + f"mlp.{hf_name}.bias"] = layer["mlp"][ours]["bias"]
  tensors = {prefix + k: v for k, v in out.items()}
  if task is None and not c.tie_embeddings:
    tensors["lm_head.weight"] = backbone["lm_head"]["kernel"][:, :vocab].T
  if task in HEADS:
    tensors.update(head_out(params[HEADS[task]], HEADS[task]))
  config = {
    "model_type": "gpt2",
    "vocab_size": vocab,
    "n_positions": c.max_len,
    "n_embd": d,
    "n_layer": c.num_layers,
    "n_head": n,
    "n_inner": c.mlp_dim,
    "activation_function": options.TO_HF[c.activation],
    "layer_norm_epsilon": c.norm_eps,
    "resid_pdrop": c.dropout_rate,
    "embd_pdrop": c.dropout_rate,
    "attn_pdrop": 0.0,  # flaxlm has no attention dropout
    "scale_attn_weights": True,
    "tie_word_embeddings": c.tie_embeddings,
  }
  return config, tensors
