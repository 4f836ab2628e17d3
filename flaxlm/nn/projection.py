"""The one projection layer: every weight matrix of every transformer family goes through
`Projection` (attention query/key/value/out, MLP in/up/out, BERT's pooler, NSP and MLM
transform, task heads, the untied LM head). The BiLSTM stays on Flax's LSTM cell and conv
(it is a baseline, not a transformer; nothing that wraps projections applies to it).

What a method that wraps projections (LoRA, quantization, pruning masks) may rely on:

- Parameters are named 'kernel' and 'bias', as `nn.Dense` names them, so a wrapper that
  adds parameters (e.g. 'kernel_lora_a') puts them beside 'kernel' in the same module and
  existing checkpoints and converters keep their paths.
- `kernel` has shape (*contracted input dims, *features): the last `contract` dims of the
  input times the kernel's first `contract` dims; `bias` has shape `features`. `axes` names
  every kernel dim logically (its last `len(features)` names are the bias's), so a wrapper
  can shard what it adds the way the kernel is sharded.
- The product is one `jax.lax.dot_general` in `dtype` (None: the promoted input dtype), then
  the bias: an interceptor of dot_general (Qwix) sees exactly one matmul per projection, and
  one of `Projection.__call__` (`flax.linen.intercept_methods`) sees `module.features`,
  `module.axes`, `module.contract` and the module path.
- Remat tags (`checkpoint_name`) and activation sharding constraints sit outside, in the
  caller, so wrapping a projection changes neither.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class Projection(nn.Module):
  """x (..., *in) -> x . kernel + bias (..., *features), contracting the last `contract` dims.

  E.g. a Dense: features=(F,), contract=1, kernel (D, F); attention's query: features=(N, H),
  kernel (D, N, H); its output: features=(D,), contract=2, kernel (N, H, D)."""

  features: tuple[int, ...]
  axes: tuple[str | None, ...]  # logical names of every kernel dim: inputs, then features
  contract: int = 1
  use_bias: bool = True
  init_std: float = 0.02
  dtype: Any = jnp.float32  # compute dtype; None: promote the input's and the kernel's

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = tuple(self.features)
    shape = (*x.shape[x.ndim - self.contract :], *features)
    if len(self.axes) != len(shape):
      raise ValueError(f"{self.name}: axes {self.axes} do not name a kernel of shape {shape}")
    init = nn.with_logical_partitioning(nn.initializers.normal(self.init_std), self.axes)
    kernel = self.param("kernel", init, shape)
    quantized = not isinstance(kernel, jax.Array)  # Qwix's int8 array + scales (nn/quantize.py)
    dtype = self.dtype or (x.dtype if quantized else jnp.result_type(x.dtype, kernel.dtype))
    x = x.astype(dtype)
    kernel = kernel if quantized else kernel.astype(dtype)  # dequantized inside dot_general
    dims = tuple(range(x.ndim - self.contract, x.ndim)), tuple(range(self.contract))
    # in `dtype` again: an interceptor's additions (LoRA's f32 adapter term) would promote it
    y = jax.lax.dot_general(x, kernel, (dims, ((), ()))).astype(dtype)
    if self.use_bias:
      axes = self.axes[len(self.axes) - len(features) :]
      bias_init = nn.with_logical_partitioning(nn.initializers.zeros, axes)
      y = y + self.param("bias", bias_init, features).astype(dtype)
    return y


def dense(features: int, axes: tuple[str | None, str | None], name: str, **kw) -> Projection:
  """A (D_in, features) projection: what nn.Dense was here."""
  return Projection((features,), axes, name=name, **kw)
