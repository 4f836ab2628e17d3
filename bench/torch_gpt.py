"""A GPT-2 style decoder in PyTorch, the peer model for `train_throughput.py`.

Same architecture as nanoGPT's model.py and flaxlm's `gpt.GPT` with learned positions:
token + learned position embeddings, pre-LayerNorm blocks (causal self-attention through
`F.scaled_dot_product_attention`, GELU-tanh MLP), final LayerNorm, output head tied to the
token embedding, biases everywhere, no dropout. Written for benchmarking, not training.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class Config:
  vocab_size: int
  num_layers: int
  num_heads: int
  embed_dim: int
  mlp_dim: int
  max_len: int


class SelfAttention(nn.Module):
  def __init__(self, c: Config):
    super().__init__()
    self.num_heads = c.num_heads
    self.qkv = nn.Linear(c.embed_dim, 3 * c.embed_dim)
    self.out = nn.Linear(c.embed_dim, c.embed_dim)

  def forward(self, x):
    b, t, d = x.shape
    q, k, v = self.qkv(x).split(d, dim=2)
    heads = lambda y: y.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)
    y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
    return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
  def __init__(self, c: Config):
    super().__init__()
    self.ln_attn = nn.LayerNorm(c.embed_dim)
    self.attn = SelfAttention(c)
    self.ln_mlp = nn.LayerNorm(c.embed_dim)
    self.mlp = nn.Sequential(
      nn.Linear(c.embed_dim, c.mlp_dim),
      nn.GELU(approximate="tanh"),
      nn.Linear(c.mlp_dim, c.embed_dim),
    )

  def forward(self, x):
    x = x + self.attn(self.ln_attn(x))
    return x + self.mlp(self.ln_mlp(x))


class GPT(nn.Module):
  """tokens (B, T) -> logits (B, T, V)."""

  def __init__(self, c: Config):
    super().__init__()
    self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
    self.pos_embed = nn.Embedding(c.max_len, c.embed_dim)
    self.blocks = nn.ModuleList(Block(c) for _ in range(c.num_layers))
    self.ln_final = nn.LayerNorm(c.embed_dim)
    self.apply(self._init)
    for block in self.blocks:  # GPT-2: residual projections scaled by 1/sqrt(2 * layers)
      for w in (block.attn.out.weight, block.mlp[2].weight):
        nn.init.normal_(w, std=0.02 / math.sqrt(2 * c.num_layers))

  @staticmethod
  def _init(m):
    if isinstance(m, (nn.Linear, nn.Embedding)):
      nn.init.normal_(m.weight, std=0.02)
    if isinstance(m, nn.Linear) and m.bias is not None:
      nn.init.zeros_(m.bias)

  def forward(self, tokens):
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    x = self.embed(tokens) + self.pos_embed(positions)
    for block in self.blocks:
      x = block(x)
    return F.linear(self.ln_final(x), self.embed.weight)  # tied output head


def make_optimizer(model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.1):
  """AdamW (b2 0.95) decaying only the matrices of linear layers, as flaxlm's default mask."""
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
  groups = [
    {"params": decay, "weight_decay": weight_decay},
    {"params": no_decay, "weight_decay": 0.0},
  ]
  return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, foreach=True)


def train_step(model, optimizer, inputs, targets, clip_norm: float = 1.0) -> torch.Tensor:
  """Forward, backward, global-norm clip, AdamW update; returns the (detached) mean loss."""
  logits = model(inputs)
  loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
  optimizer.zero_grad(set_to_none=True)
  loss.backward()
  torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm, foreach=True)
  optimizer.step()
  return loss.detach()
