"""T5 v1.0 and v1.1 (`model_type: t5 | mt5`) <-> flaxlm's `EncDecConfig` with relative
position bias.

Owns the name map between transformers' T5Model / T5ForConditionalGeneration and flaxlm's
EncoderDecoder tree, and three differences in what the two compute:
  - HF T5 does not scale q.k by 1/sqrt(H); flaxlm does, so import multiplies the query
    kernels by sqrt(H) and export divides it out.
  - Each stack's relative-bias table lives in HF's first block and is shared by the stack's
    layers, as flaxlm's one `relative_bias` table per stack is; HF's unused cross-attention
    table (decoder block 0) is skipped, as transformers skips it.
  - The output head: tied and scaled by D^-0.5 (v1.0), or untied and unscaled (v1.1), read
    as transformers 5 reads it: `scale_decoder_outputs` (else `tie_word_embeddings`) says
    whether to scale, and a saved `lm_head` that differs from `shared` is untied. An untied
    scaled head is folded into the kernel.
"""

from __future__ import annotations

import numpy as np

from flaxlm.convert import options
from flaxlm.convert.tree import (
  Converted,
  Weights,
  from_heads,
  lm_head,
  norm,
  out_from_heads,
  out_to_heads,
  pad_rows,
  to_heads,
)
from flaxlm.errors import ConfigError
from flaxlm.models.encdec import EncDecConfig

ARCH, FAMILY, MODEL_TYPES = "t5", "encdec", ("t5", "mt5")
CLASSES = {None: "T5ForConditionalGeneration", "bare": "T5Model"}
ATTN = {"query": "q", "key": "k", "value": "v"}


def fits(c) -> bool:
  return isinstance(c, EncDecConfig) and c.position == "relative"


def _activation(hf: dict) -> tuple[str, bool]:
  """(flaxlm activation, gated) from `feed_forward_proj` ('relu', 'gated-gelu', ...)."""
  spec = hf.get("feed_forward_proj", "relu")
  parts = spec.split("-")
  gated = parts[0] == "gated" and len(parts) == 2
  name = "gelu_new" if spec == "gated-gelu" else parts[-1]  # transformers' special case
  if name not in options.FROM_HF or (len(parts) == 2 and not gated) or len(parts) > 2:
    raise options.unsupported(
      hf, "feed_forward_proj", spec, f"flaxlm has {sorted(options.FROM_HF)}"
    )
  return options.FROM_HF[name], gated


def import_checkpoint(hf: dict, tensors: dict, vocab: int) -> Converted:
  if any(k.startswith("transformer.") for k in tensors):
    raise options.unsupported(
      hf,
      "architectures",
      hf.get("architectures"),
      "import T5 task models' backbone from a T5Model folder",
    )
  activation, gated = _activation(hf)
  d, n, h = hf["d_model"], hf["num_heads"], hf["d_kv"]
  num_layers = hf["num_layers"]
  num_decoder = hf.get("num_decoder_layers") or num_layers
  w = Weights(tensors)
  shared = w.take("shared.weight")
  for stack in ("encoder", "decoder"):
    w.take_copy(f"{stack}.embed_tokens.weight", shared)
  tied, head = lm_head(hf, w, "lm_head.weight", shared)
  scale = bool(hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True)))
  config = EncDecConfig(
    vocab_size=vocab,
    num_layers=num_layers,
    num_decoder_layers=num_decoder if num_decoder != num_layers else 0,
    num_heads=n,
    head_dim=h if h * n != d else 0,
    embed_dim=d,
    mlp_dim=hf["d_ff"],
    max_len=hf.get("n_positions", 512),
    dropout_rate=float(hf.get("dropout_rate", 0.1)),
    position="relative",
    norm="rmsnorm",
    norm_eps=hf.get("layer_norm_epsilon", 1e-6),
    use_bias=False,
    activation=activation,
    gated_mlp=gated,
    tie_embeddings=tied,
    scale_tied_logits=tied and scale,
    relative_buckets=hf.get("relative_attention_num_buckets", 32),
    relative_max_distance=hf.get("relative_attention_max_distance", 128),
  )
  params = {"embedder": {"embedding": pad_rows(shared, vocab)}}
  unused = "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"
  if w.has(unused):  # transformers ignores this table on load; so do we
    w.take(unused)
  for stack, count in (("encoder", num_layers), ("decoder", num_decoder)):
    b = f"{stack}.block."
    tree = {
      "relative_bias": {
        "embedding": w.take(b + "0.layer.0.SelfAttention.relative_attention_bias.weight")
      },
      "ln_final": norm(w.take(f"{stack}.final_layer_norm.weight")),
    }
    for i in range(count):
      p = f"{b}{i}.layer."
      sub = ["attn", "cross_attn"] if stack == "decoder" else ["attn"]
      hf_sub = ["SelfAttention", "EncDecAttention"]
      layer = {}
      for j, (ours, theirs) in enumerate(zip(sub, hf_sub, strict=False)):
        layer[ours] = _attention_in(w, f"{p}{j}.{theirs}.", n, h)
        layer["ln_" + ("attn" if j == 0 else "cross")] = norm(w.take(f"{p}{j}.layer_norm.weight"))
      k = len(sub)  # the feed-forward sub-layer's index
      layer["ln_mlp"] = norm(w.take(f"{p}{k}.layer_norm.weight"))
      ff = f"{p}{k}.DenseReluDense."
      names = {"wi": "wi_0", "wi_up": "wi_1"} if gated else {"wi": "wi"}
      layer["mlp"] = {ours: {"kernel": w.take(ff + f"{t}.weight").T} for ours, t in names.items()}
      layer["mlp"]["wo"] = {"kernel": w.take(ff + "wo.weight").T}
      tree[f"layers_{i}"] = layer
    params[stack] = tree
  if head is not None:
    # An untied head scaled by transformers (scale_decoder_outputs) carries the scale here.
    params["decoder"]["lm_head"] = {"kernel": pad_rows(head, vocab).T * (d**-0.5 if scale else 1.0)}
  return Converted(config, params, None, w.leftover())


def _attention_in(w: Weights, p: str, n: int, h: int) -> dict:
  out = {ours: {"kernel": to_heads(w.take(f"{p}{t}.weight"), n)} for ours, t in ATTN.items()}
  out["query"]["kernel"] = out["query"]["kernel"] * np.float32(h**0.5)  # HF leaves q.k unscaled
  out["out"] = {"kernel": out_to_heads(w.take(p + "o.weight"), n)}
  return out


def _attention_out(params: dict, p: str, h: int) -> dict:
  out = {f"{p}{t}.weight": from_heads(params[ours]["kernel"]) for ours, t in ATTN.items()}
  out[p + "q.weight"] = out[p + "q.weight"] / np.float32(h**0.5)
  out[p + "o.weight"] = out_from_heads(params["out"]["kernel"])
  return out


def export_checkpoint(c: EncDecConfig, params: dict, task, vocab: int, arch: str, pad_id):
  """(config.json fields, {HF name: array}) for CLASSES[task]; `vocab` rows are kept."""
  del arch
  if task not in CLASSES:
    raise ConfigError(
      f"task={task!r}: transformers' T5 task heads read the decoder or their own head, not "
      "flaxlm's; T5 exports as a language model (task=None) or bare (task='bare')"
    )
  options.check_export(
    c,
    ARCH,
    free_head_dim=True,
    position="relative",
    norm="rmsnorm",
    norm_position="pre",
    use_bias=False,
    scale_embeddings=False,
  )
  if c.gated_mlp and c.activation == "gelu_exact":
    raise ConfigError(
      "a Hugging Face t5 model cannot express a gated exact GELU ('gated-gelu' is tanh)"
    )
  h = c.dim_per_head
  shared = params["embedder"]["embedding"][:vocab]
  out = {"shared.weight": shared}
  for stack, count in (("encoder", c.num_layers), ("decoder", c.decoder_layers)):
    tree, b = params[stack], f"{stack}.block."
    out[b + "0.layer.0.SelfAttention.relative_attention_bias.weight"] = tree["relative_bias"][
      "embedding"
    ]
    out[f"{stack}.final_layer_norm.weight"] = tree["ln_final"]["scale"]
    for i in range(count):
      layer, p = tree[f"layers_{i}"], f"{b}{i}.layer."
      out.update(_attention_out(layer["attn"], f"{p}0.SelfAttention.", h))
      out[f"{p}0.layer_norm.weight"] = layer["ln_attn"]["scale"]
      k = 1
      if stack == "decoder":
        out.update(_attention_out(layer["cross_attn"], f"{p}1.EncDecAttention.", h))
        out[f"{p}1.layer_norm.weight"] = layer["ln_cross"]["scale"]
        k = 2
      out[f"{p}{k}.layer_norm.weight"] = layer["ln_mlp"]["scale"]
      names = (
        {"wi": "wi_0", "wi_up": "wi_1", "wo": "wo"} if c.gated_mlp else {"wi": "wi", "wo": "wo"}
      )
      for ours, theirs in names.items():
        out[f"{p}{k}.DenseReluDense.{theirs}.weight"] = layer["mlp"][ours]["kernel"].T
  scaled = c.tie_embeddings and c.scale_tied_logits
  if task is None and not scaled:  # a head of its own: untied, or tied but unscaled
    kernel = params["decoder"]["lm_head"]["kernel"][:, :vocab].T if not c.tie_embeddings else shared
    out["lm_head.weight"] = kernel
  act = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu", "silu": "silu"}[c.activation]
  config = {
    "model_type": "t5",
    "vocab_size": vocab,
    "d_model": c.embed_dim,
    "d_kv": h,
    "d_ff": c.mlp_dim,
    "num_layers": c.num_layers,
    "num_decoder_layers": c.decoder_layers,
    "num_heads": c.num_heads,
    "relative_attention_num_buckets": c.relative_buckets,
    "relative_attention_max_distance": c.relative_max_distance,
    "dropout_rate": c.dropout_rate,
    "layer_norm_epsilon": c.norm_eps,
    "feed_forward_proj": "gated-gelu"
    if c.gated_mlp and c.activation == "gelu"
    else ("gated-" if c.gated_mlp else "") + act,
    "tie_word_embeddings": scaled,
    "scale_decoder_outputs": scaled,
    "is_encoder_decoder": True,
    "decoder_start_token_id": 0 if pad_id is None else pad_id,
  }
  return config, out
