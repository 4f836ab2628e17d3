"""Model-level properties of the GPT decoder across its variants: causality, KV-cache decoding,
packed segments, scan/remat equivalence, dropout, bfloat16 and the FLOP count."""

import dataclasses
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxlm.models import gpt
from flaxlm.nn import losses

VOCAB, B, T = 64, 2, 16
BASE = gpt.GPTConfig(
  vocab_size=VOCAB, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64, max_len=T
)
CONFIGS = {
  # GPT-2: learned positions, LayerNorm with biases, GELU, tied embeddings, unrolled layers.
  "gpt2": BASE,
  # Sinusoidal positions, bias-free LayerNorm and projections, untied output head.
  "sinusoidal": dataclasses.replace(
    BASE, position="sinusoidal", use_bias=False, tie_embeddings=False, activation="relu"
  ),
  # LLaMA: RoPE, RMSNorm, SwiGLU, grouped-query attention, untied, scanned layers.
  "llama": dataclasses.replace(
    BASE,
    position="rope",
    norm="rmsnorm",
    activation="silu",
    gated_mlp=True,
    num_kv_heads=2,
    use_bias=False,
    tie_embeddings=False,
    scan_layers=True,
  ),
}
NAMES = list(CONFIGS)


@functools.cache
def random_params(config: gpt.GPTConfig, seed: int = 0):
  """Random parameters of the right shapes drawn with numpy (cheaper than compiling `init`).

  Norm scales are drawn around 1, everything else around 0 with a spread large enough that
  every layer visibly changes the logits."""
  abstract = jax.eval_shape(
    lambda: gpt.GPT(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  )
  rng = np.random.default_rng(seed)

  def draw(path, a):
    x = rng.normal(scale=0.2, size=a.shape).astype(np.float32)
    return jnp.asarray(1.0 + 0.5 * x if path[-1].key == "scale" else x)

  return jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(abstract))


@functools.cache
def forward(config: gpt.GPTConfig):
  """Jitted logits = GPT(config).apply(params, tokens, ...); one compile per config and shape."""
  return jax.jit(gpt.GPT(config).apply, static_argnames=("deterministic", "decode", "mutable"))


def random_tokens(seed=0, batch=B, length=T):
  return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (batch, length)), jnp.int32)


def mean_loss(config, params, tokens):
  """Mean next-token cross-entropy of `tokens` under the model."""
  logits = gpt.GPT(config).apply({"params": params}, tokens[:, :-1])
  sums = losses.cross_entropy(logits, tokens[:, 1:], jnp.ones(tokens[:, 1:].shape))
  return sums["loss_sum"] / sums["weight_sum"]


@functools.cache
def loss_and_grad(config: gpt.GPTConfig):
  return jax.jit(jax.value_and_grad(functools.partial(mean_loss, config)))


def tree_allclose(a, b, atol, rtol=0.0):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)


def stack_layers(params, num_layers):
  """Unrolled parameters (layers_0 .. layers_{L-1}) -> the scanned tree ('layers', axis 0)."""
  out = {k: v for k, v in params.items() if not k.startswith("layers_")}
  per_layer = [params[f"layers_{i}"] for i in range(num_layers)]
  out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
  return out


def unstack_layers(params, num_layers):
  """The scanned tree -> unrolled parameters (inverse of `stack_layers`)."""
  out = {k: v for k, v in params.items() if k != "layers"}
  for i in range(num_layers):
    out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
  return out


# ----------------------------------------------------------------------------- causality


@pytest.mark.parametrize("name", NAMES)
def test_logits_ignore_future_tokens(name):
  """Changing token t leaves the logits at positions < t unchanged and changes those at >= t."""
  config = CONFIGS[name]
  params = random_params(config)
  tokens = random_tokens(batch=1)
  for t in (0, 5, T - 1):
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % VOCAB)
    logits = forward(config)({"params": params}, jnp.concatenate([tokens, changed]))
    np.testing.assert_allclose(logits[0, :t], logits[1, :t], atol=1e-6)
    assert np.abs(logits[0, t] - logits[1, t]).max() > 1e-4


def test_configs_differ():
  """The variants really compute different functions (so each parametrization tests something)."""
  tokens = random_tokens()
  outs = [forward(c)({"params": random_params(c)}, tokens) for c in CONFIGS.values()]
  for i in range(len(outs)):
    for j in range(i):
      assert np.abs(outs[i] - outs[j]).max() > 1e-3
  # Positions matter: permuting the same tokens changes the last position's logits.
  for name in NAMES:
    config = CONFIGS[name]
    swapped = tokens[:, ::-1].at[:, -1].set(tokens[:, -1])
    a = forward(config)({"params": random_params(config)}, tokens)[:, -1]
    b = forward(config)({"params": random_params(config)}, swapped)[:, -1]
    assert np.abs(a - b).max() > 1e-3, name


# ----------------------------------------------------------------------------- KV cache


def empty_cache(config, batch, length):
  model = gpt.GPT(config)
  abstract = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((batch, length), jnp.int32), decode=True)
  )
  return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract["cache"])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("prefill", [1, 5], ids=["one_at_a_time", "prefill5"])
def test_kv_cache_decoding_equals_full_forward(name, prefill):
  """Feeding a prefill chunk and then single tokens through the cache gives the full logits."""
  config = CONFIGS[name]
  params = random_params(config)
  tokens = random_tokens(seed=1)
  positions = jnp.broadcast_to(jnp.arange(T), tokens.shape)
  full = forward(config)({"params": params}, tokens)

  cache = empty_cache(config, B, T)
  step = forward(config)
  outs, start = [], 0
  for stop in [prefill, *range(prefill + 1, T + 1)]:
    logits, mutated = step(
      {"params": params, "cache": cache},
      tokens[:, start:stop],
      positions=positions[:, start:stop],
      decode=True,
      mutable=("cache",),
    )
    outs.append(logits)
    cache, start = mutated["cache"], stop
  indices = [v for k, v in _flat(cache).items() if "cache_index" in k]
  assert indices and all(np.all(v == T) for v in indices)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5)


def _flat(tree):
  return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


# ----------------------------------------------------------------------------- packed segments


@pytest.mark.parametrize("name", NAMES)
def test_packed_documents_match_documents_alone(name):
  """Two documents packed in one row, positions restarting, give each document's own logits;
  trailing padding (segment 0) stays finite and does not disturb them."""
  config = CONFIGS[name]
  params = random_params(config)
  doc_a, doc_b = random_tokens(seed=2, batch=1, length=6), random_tokens(seed=3, batch=1, length=7)
  n_pad = T - 13
  row = jnp.concatenate([doc_a, doc_b, jnp.zeros((1, n_pad), jnp.int32)], axis=1)
  positions = jnp.array([list(range(6)) + list(range(7)) + [0] * n_pad] * 2)
  # Row 0 is packed; row 1 holds the same tokens as one segment, so document b sees document a.
  segment_ids = jnp.array([[1] * 6 + [2] * 7 + [0] * n_pad, [1] * T])
  packed = forward(config)(
    {"params": params}, jnp.concatenate([row, row]), positions=positions, segment_ids=segment_ids
  )
  assert np.isfinite(packed).all()
  # Each document alone from position 0, padded at the end (causality makes that irrelevant).
  pad_to_t = lambda doc: jnp.pad(doc, ((0, 0), (0, T - doc.shape[1])))
  alone = forward(config)({"params": params}, jnp.concatenate([pad_to_t(doc_a), pad_to_t(doc_b)]))
  np.testing.assert_allclose(packed[0, :6], alone[0, :6], atol=1e-5)
  np.testing.assert_allclose(packed[0, 6:13], alone[1, :7], atol=1e-5)
  assert np.abs(packed[1, 6:13] - alone[1, :7]).max() > 1e-3  # without segments: it differs


# ----------------------------------------------------------------------------- scan and remat


def scanned_and_unrolled(name):
  """(scanned config, its params, unrolled config, the same params unrolled)."""
  scanned = dataclasses.replace(CONFIGS[name], scan_layers=True)
  unrolled = dataclasses.replace(CONFIGS[name], scan_layers=False)
  params = random_params(unrolled)
  return scanned, stack_layers(params, unrolled.num_layers), unrolled, params


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_scan_layers_equals_unrolled_logits(name):
  """nn.scan over a stacked 'layers' tree computes the same logits as the unrolled
  layers_0..L-1 holding the same weights."""
  scanned, stacked, unrolled, params = scanned_and_unrolled(name)
  # The conversion gives exactly the tree the scanned model creates.
  abstract = jax.eval_shape(
    lambda: gpt.GPT(scanned).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  )
  assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(
    jnp.shape, nn.meta.unbox(abstract["params"])
  )
  tokens = random_tokens(seed=4)
  np.testing.assert_allclose(
    forward(scanned)({"params": stacked}, tokens),
    forward(unrolled)({"params": params}, tokens),
    atol=1e-5,
  )


def test_scan_layers_equals_unrolled_grads():
  """... and the same loss and gradients (LLaMA-style model, the scanned preset's layout)."""
  scanned, stacked, unrolled, params = scanned_and_unrolled("llama")
  tokens = random_tokens(seed=5)
  loss_u, grads_u = loss_and_grad(unrolled)(params, tokens)
  loss_s, grads_s = loss_and_grad(scanned)(stacked, tokens)
  np.testing.assert_allclose(loss_s, loss_u, rtol=1e-6)
  tree_allclose(unstack_layers(grads_s, unrolled.num_layers), grads_u, atol=1e-6, rtol=1e-5)
  assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads_u["layers_1"]))


@pytest.mark.slow  # CI runs it; the default suite stays under 15 minutes
def test_remat_policies_give_identical_loss_and_grads():
  """Rematerialization changes what the backward pass stores, never what it computes (scanned
  LLaMA-style layers, as the llama_1b preset runs them)."""
  _, params, _, _ = scanned_and_unrolled("llama")
  base = CONFIGS["llama"]
  tokens = random_tokens(seed=5)
  ref_loss, ref_grads = loss_and_grad(base)(params, tokens)
  grad_program = lambda config: str(
    jax.make_jaxpr(jax.grad(functools.partial(mean_loss, config)))(params, tokens)
  )
  assert "remat" not in grad_program(base)
  for policy in sorted(set(gpt.REMAT_POLICIES) - {"none"}):
    config = dataclasses.replace(base, remat_policy=policy)
    assert "remat" in grad_program(config), policy  # the policy is really applied
    loss, grads = loss_and_grad(config)(params, tokens)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    tree_allclose(grads, ref_grads, atol=1e-6, rtol=1e-5)


NAMED_POLICIES = {
  "full": set(),
  "save_qkv_proj": {"query_proj", "key_proj", "value_proj"},
  "save_attention_out": {"query_proj", "key_proj", "value_proj", "context", "out_proj"},
  # mlpwo is named too, but its value is never needed: the gradient of x + mlp(x) is not.
  "minimal": {"query_proj", "key_proj", "value_proj", "context", "out_proj", "mlpwi", "mlpwi_up"},
}


@pytest.mark.parametrize("policy", sorted(NAMED_POLICIES))
def test_named_remat_policies_keep_what_they_name(policy, capsys):
  """The backward pass keeps exactly the block's tagged tensors its policy names that it
  needs (gated MLP, unrolled layers, where residuals show their checkpoint names)."""
  config = dataclasses.replace(
    CONFIGS["llama"], scan_layers=False, num_layers=1, remat_policy=policy
  )
  params = random_params(config)
  tokens = random_tokens(seed=5)
  jax.ad_checkpoint.print_saved_residuals(functools.partial(mean_loss, config), params, tokens)
  names = set(re.findall(r"named '(\w+)'", capsys.readouterr().out))
  assert names == NAMED_POLICIES[policy]


# ----------------------------------------------------------------------------- dropout


def test_dropout():
  """deterministic=True needs no rng and equals the model without dropout; deterministic=False
  drops with the given rng: same key, same output; another key, another output."""
  config = dataclasses.replace(CONFIGS["llama"], dropout_rate=0.2)  # scanned: per-layer rngs
  no_dropout = dataclasses.replace(config, dropout_rate=0.0)
  params = random_params(no_dropout)
  tokens = random_tokens(seed=6)
  apply = forward(config)
  clean = apply({"params": params}, tokens)  # no rngs given
  np.testing.assert_array_equal(clean, forward(no_dropout)({"params": params}, tokens))
  noisy = lambda seed: apply(
    {"params": params},
    tokens,
    deterministic=False,
    rngs={"dropout": jax.random.PRNGKey(seed)},
  )
  a, a_again, b = noisy(0), noisy(0), noisy(1)
  np.testing.assert_array_equal(a, a_again)
  assert np.abs(a - clean).max() > 1e-3
  assert np.abs(a - b).max() > 1e-3
  with pytest.raises(Exception, match="dropout"):  # flax: no 'dropout' rng was given
    apply({"params": params}, tokens, deterministic=False)


# ----------------------------------------------------------------------------- bfloat16


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_bfloat16_compute_float32_params(name):
  """dtype='bfloat16' computes in bf16 (close to, not equal to, f32) while the parameters and
  the returned logits stay float32."""
  config = dataclasses.replace(CONFIGS[name], dtype="bfloat16")
  abstract = jax.eval_shape(
    lambda: gpt.GPT(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  )
  assert {a.dtype for a in jax.tree.leaves(nn.meta.unbox(abstract))} == {jnp.dtype("float32")}
  params = random_params(CONFIGS[name])
  tokens = random_tokens(seed=7)
  logits = forward(config)({"params": params}, tokens)
  ref = forward(CONFIGS[name])({"params": params}, tokens)
  assert logits.dtype == jnp.float32 and np.isfinite(logits).all()
  err = np.abs(logits - ref).max()
  assert 0 < err < 0.1 * np.abs(ref).max(), err
  jaxpr = str(jax.make_jaxpr(gpt.GPT(config).apply)({"params": params}, tokens))
  assert "bf16[2,16,4,8]" in jaxpr  # attention heads (B, T, N, H) in bfloat16


# ----------------------------------------------------------------------------- FLOPs


def dot_flops(jaxpr) -> float:
  """2 x multiply-adds of every dot_general in a (closed) jaxpr, sub-jaxprs and scans included."""
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contract, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
      lhs, rhs = (v.aval.shape for v in eqn.invars)
      rhs_free = [d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
      total += 2.0 * np.prod(lhs) * np.prod(rhs_free)
    mult = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for param in eqn.params.values():
      for sub in param if isinstance(param, tuple | list) else [param]:
        if hasattr(sub, "eqns"):  # a Jaxpr
          total += mult * dot_flops(sub)
        elif hasattr(getattr(sub, "jaxpr", None), "eqns"):  # a ClosedJaxpr
          total += mult * dot_flops(sub.jaxpr)
  return total


@pytest.mark.parametrize("name", NAMES)
def test_flops_per_token_counts_the_forward_matmuls(name):
  """flops_per_token = 3 x (matmul FLOPs of one forward pass per token), checked against the
  dot_generals XLA actually runs: 2 x (matmul weights) + 4 x T x N x H per layer, + head."""
  config = CONFIGS[name]
  params = random_params(config)
  tokens = random_tokens(batch=1)
  jaxpr = jax.make_jaxpr(gpt.GPT(config).apply)({"params": params}, tokens)
  per_token = dot_flops(jaxpr.jaxpr) / T
  np.testing.assert_allclose(gpt.flops_per_token(config, T), 3 * per_token, rtol=1e-9)

  # The closed form: 6 x (weights used in matmuls) + 12 x L x T x N x H.
  flat = _flat(params)
  matmul = (
    sum(v.size for k, v in flat.items() if k.endswith("['kernel']") and "['layers" in k)
    + VOCAB * config.embed_dim
  )
  attn = 12 * config.num_layers * T * config.num_heads * config.dim_per_head
  assert gpt.flops_per_token(config, T) == 6 * matmul + attn


def test_flops_per_token_grows_with_layers_and_length():
  per_layer = gpt.flops_per_token(dataclasses.replace(BASE, num_layers=3), T) - gpt.flops_per_token(
    BASE, T
  )
  assert per_layer > 0
  for layers in (4, 12):
    np.testing.assert_allclose(
      gpt.flops_per_token(dataclasses.replace(BASE, num_layers=layers), T),
      gpt.flops_per_token(BASE, T) + (layers - 2) * per_layer,
    )
  # Only the attention term depends on the sequence length, linearly.
  longer = gpt.flops_per_token(BASE, 2 * T) - gpt.flops_per_token(BASE, T)
  assert longer == 12 * BASE.num_layers * T * BASE.num_heads * BASE.dim_per_head
  # gpt2_small: 6 x 124M matmul weights (85M in the blocks, 39M in the head) + attention.
  blocks = 12 * (4 * 768 * 768 + 2 * 768 * 3072)
  head = 768 * 50304
  expected = 6 * (blocks + head) + 12 * 12 * 1024 * 768
  assert gpt.flops_per_token(gpt.PRESETS["gpt2_small"], 1024) == expected
  np.testing.assert_allclose(6 * (blocks + head), 6 * 124e6, rtol=0.01)


def test_maxtext_convention_halves_the_causal_attention_flops():
  """PaLM counts 12 x L x T x N x H attention FLOPs per token; MaxText half of it for causal
  attention (what a kernel skipping the masked blocks does); the rest is the same."""
  for config in (BASE, gpt.PRESETS["llama_1b"]):
    palm = gpt.flops_per_token(config, 2048)
    maxtext = gpt.flops_per_token(config, 2048, causal=True)
    attn = 12 * config.num_layers * 2048 * config.num_heads * config.dim_per_head
    assert palm - maxtext == attn / 2
