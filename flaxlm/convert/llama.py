"""LLaMA-style decoders (`model_type: llama`, and `mistral` without a sliding window) <->
flaxlm's `GPTConfig` with RoPE, RMSNorm, SwiGLU and grouped-query attention.

Owns the name map between transformers' LlamaModel / LlamaForCausalLM (and the token
classification and span QA heads) and flaxlm's GPT tree. Both rotate the halves
(x[:H/2], x[H/2:]) of each head with frequencies theta^(-2i/H), so q and k need no
permutation; kv head k serves query heads k*G .. k*G+G-1 in both. RoPE scaling, partial
rotary dimensions and sliding windows have no flaxlm counterpart and fail naming the option.
"""

from __future__ import annotations

from flaxlm.convert import options
from flaxlm.convert.tree import (
  Converted,
  Weights,
  dense,
  from_heads,
  head_in,
  head_out,
  lm_head,
  norm,
  out_from_heads,
  out_to_heads,
  pad_rows,
  to_heads,
)
from flaxlm.models.gpt import GPTConfig

ARCH, FAMILY, MODEL_TYPES = "llama", "gpt", ("llama", "mistral")
CLASSES = {
  None: "LlamaForCausalLM",
  "bare": "LlamaModel",
  "token": "LlamaForTokenClassification",
  "span": "LlamaForQuestionAnswering",
}
HEADS = {"token": ("classifier", "score"), "span": ("qa_outputs", "qa_outputs")}  # flaxlm, HF
PREFIXES = {None: "model.", "bare": "", "token": "model.", "span": "transformer."}
PROJ = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}
MLP = {"wi": "gate_proj", "wi_up": "up_proj", "wo": "down_proj"}


def fits(c) -> bool:
  return isinstance(c, GPTConfig) and c.position == "rope"


def _rope_theta(hf: dict) -> float:
  if hf.get("rope_scaling"):
    raise options.unsupported(hf, "rope_scaling", hf["rope_scaling"], "flaxlm's RoPE is unscaled")
  rope = hf.get("rope_parameters") or {}
  kind = rope.get("rope_type", rope.get("type", "default"))
  if kind != "default":
    raise options.unsupported(hf, "rope_parameters.rope_type", kind, "flaxlm's RoPE is unscaled")
  for where in (rope, hf):
    if where.get("partial_rotary_factor", 1.0) != 1.0:
      raise options.unsupported(hf, "partial_rotary_factor", where["partial_rotary_factor"])
  return float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0)))


def import_checkpoint(hf: dict, tensors: dict, vocab: int) -> Converted:
  if hf.get("sliding_window") is not None:
    raise options.unsupported(hf, "sliding_window", hf["sliding_window"], "flaxlm attends fully")
  use_bias = bool(hf.get("attention_bias", False))
  options.require(hf, "mlp_bias", (use_bias,), False, "flaxlm gives all or no projections a bias")
  if "score.weight" in tensors and "score.bias" not in tensors:
    raise options.unsupported(
      hf,
      "architectures",
      hf.get("architectures"),
      "a sequence classifier without bias, reading the last non-pad token",
    )
  d, n, num_layers = hf["hidden_size"], hf["num_attention_heads"], hf["num_hidden_layers"]
  kv = hf.get("num_key_value_heads") or n
  head_dim = hf.get("head_dim") or d // n
  task = next((t for t, (_, name) in HEADS.items() if f"{name}.weight" in tensors), None)
  prefix = next(
    (p for p in ("model.", "transformer.") if any(k.startswith(p) for k in tensors)), ""
  )
  w = Weights(tensors, prefix)
  embed = w.take("embed_tokens.weight")
  tied, head = lm_head(hf, w, "lm_head.weight", embed, tie_default=False)
  config = GPTConfig(
    vocab_size=vocab,
    num_layers=num_layers,
    num_heads=n,
    num_kv_heads=kv if kv != n else 0,
    head_dim=head_dim if head_dim != d // n else 0,
    embed_dim=d,
    mlp_dim=hf["intermediate_size"],
    max_len=hf.get("max_position_embeddings", 2048),
    position="rope",
    rope_theta=_rope_theta(hf),
    norm="rmsnorm",
    norm_eps=hf.get("rms_norm_eps", 1e-6),
    activation=options.activation(hf, "hidden_act", "silu"),
    gated_mlp=True,
    use_bias=use_bias,
    tie_embeddings=tied,
  )
  bias = lambda key: w.take(key) if use_bias else None
  params = {"embed": {"embedding": pad_rows(embed, vocab)}, "ln_final": norm(w.take("norm.weight"))}
  for i in range(num_layers):
    p = f"layers.{i}."
    attn = {}
    for ours, theirs, heads in (
      ("query", "q_proj", n),
      ("key", "k_proj", kv),
      ("value", "v_proj", kv),
    ):
      attn[ours] = {"kernel": to_heads(w.take(f"{p}self_attn.{theirs}.weight"), heads)}
      if use_bias:
        attn[ours]["bias"] = w.take(f"{p}self_attn.{theirs}.bias").reshape(heads, -1)
    attn["out"] = {"kernel": out_to_heads(w.take(p + "self_attn.o_proj.weight"), n)}
    if use_bias:
      attn["out"]["bias"] = w.take(p + "self_attn.o_proj.bias")
    mlp = {k: dense(w.take(f"{p}mlp.{v}.weight"), bias(f"{p}mlp.{v}.bias")) for k, v in MLP.items()}
    params[f"layers_{i}"] = {
      "ln_attn": norm(w.take(p + "input_layernorm.weight")),
      "attn": attn,
      "ln_mlp": norm(w.take(p + "post_attention_layernorm.weight")),
      "mlp": mlp,
    }
  if head is not None:
    params["lm_head"] = {"kernel": pad_rows(head, vocab).T}  # (V, D) -> (D, V)
  if task:
    ours, theirs = HEADS[task]
    params = {"backbone": params, ours: head_in(w, theirs)}
  w.skip_buffers("rotary_emb.inv_freq")
  return Converted(config, params, task, w.leftover())


def export_checkpoint(c: GPTConfig, params: dict, task, vocab: int, arch: str, pad_id):
  """(config.json fields, {HF name: array}) for CLASSES[task]; `vocab` rows are kept."""
  del arch, pad_id  # one architecture; the pad id is not part of it
  options.check_export(
    c,
    ARCH,
    free_head_dim=True,
    position="rope",
    norm="rmsnorm",
    norm_position="pre",
    gated_mlp=True,
  )
  backbone = params.get("backbone", params)
  out = {"embed_tokens.weight": backbone["embed"]["embedding"][:vocab]}
  out["norm.weight"] = backbone["ln_final"]["scale"]
  for i in range(c.num_layers):
    layer, p = backbone[f"layers_{i}"], f"layers.{i}."
    for ours, theirs in PROJ.items():
      out[f"{p}self_attn.{theirs}.weight"] = from_heads(layer["attn"][ours]["kernel"])
      if c.use_bias:
        out[f"{p}self_attn.{theirs}.bias"] = layer["attn"][ours]["bias"].reshape(-1)
    out[p + "self_attn.o_proj.weight"] = out_from_heads(layer["attn"]["out"]["kernel"])
    if c.use_bias:
      out[p + "self_attn.o_proj.bias"] = layer["attn"]["out"]["bias"]
    for ours, theirs in MLP.items():
      out[f"{p}mlp.{theirs}.weight"] = layer["mlp"][ours]["kernel"].T
      if c.use_bias:
        out[f"{p}mlp.{theirs}.bias"] = layer["mlp"][ours]["bias"]
    out[p + "input_layernorm.weight"] = layer["ln_attn"]["scale"]
    out[p + "post_attention_layernorm.weight"] = layer["ln_mlp"]["scale"]
  tensors = {PREFIXES[task] + k: v for k, v in out.items()}
  if task is None and not c.tie_embeddings:
    tensors["lm_head.weight"] = backbone["lm_head"]["kernel"][:, :vocab].T
  if task in HEADS:
    ours, theirs = HEADS[task]
    tensors.update(head_out(params[ours], theirs))
  config = {
    "model_type": "llama",
    "vocab_size": vocab,
    "hidden_size": c.embed_dim,
    "intermediate_size": c.mlp_dim,
    "num_hidden_layers": c.num_layers,
    "num_attention_heads": c.num_heads,
    "num_key_value_heads": c.kv_heads,
    "head_dim": c.dim_per_head,
    "hidden_act": options.TO_HF[c.activation],
    "max_position_embeddings": c.max_len,
    "rms_norm_eps": c.norm_eps,
    "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
    "rope_theta": c.rope_theta,  # what transformers 4.x reads
    "attention_bias": c.use_bias,
    "mlp_bias": c.use_bias,
    "attention_dropout": 0.0,
    "tie_word_embeddings": c.tie_embeddings,
  }
  return config, tensors
