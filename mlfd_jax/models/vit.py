"""Vision Transformer without class token, exposing the token grid at four depths as stages.

A ViT has no pyramid: all four stage maps have stride `patch_size`; they are the tokens after
blocks depth/4, depth/2, 3*depth/4 and depth (the last one after the final LayerNorm), so the
fusion and distillation code can treat it like a CNN.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mlfd_jax.models.layers import (LEVELS, SMALL_IMAGE, FeatureSpace, check_image_size,
                                    check_width, scaled, stochastic_rngs)

_xavier = nnx.initializers.xavier_uniform()
_head_init = nnx.initializers.normal(0.02)  # timm's trunc_normal_(std=.02) cuts at 100 sigma.
_patch_init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal")


def _ln(dim, *, dtype, rngs):
  return nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)


class Attention(nnx.Module):
  """Multi-head self-attention with one fused qkv projection."""

  def __init__(self, dim, heads, *, dtype, rngs):
    self.heads = heads
    self.qkv = nnx.Linear(dim, 3 * dim, kernel_init=_xavier, dtype=dtype, rngs=rngs)
    self.proj = nnx.Linear(dim, dim, kernel_init=_xavier, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    b, t, d = x.shape
    qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads)
    # jax.nn.dot_product_attention keeps the softmax in float32 and may pick a fused kernel.
    y = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    return self.proj(y.reshape(b, t, d))


class EncoderBlock(nnx.Module):
  """Pre-LN block: x + Drop(Attn(LN x)); x + Drop(MLP(LN x))."""

  def __init__(self, dim, heads, dropout, *, dtype, rngs):
    self.norm1 = _ln(dim, dtype=dtype, rngs=rngs)
    self.attn = Attention(dim, heads, dtype=dtype, rngs=rngs)
    self.norm2 = _ln(dim, dtype=dtype, rngs=rngs)
    self.fc1 = nnx.Linear(dim, 4 * dim, kernel_init=_xavier, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(4 * dim, dim, kernel_init=_xavier, dtype=dtype, rngs=rngs)
    self.drop = nnx.Dropout(dropout)

  def __call__(self, x, *, train, rngs):
    det = not train
    x = x + self.drop(self.attn(self.norm1(x)), deterministic=det, rngs=rngs)
    y = self.drop(nnx.gelu(self.fc1(self.norm2(x)), approximate=False), deterministic=det,
                  rngs=rngs)
    return x + self.drop(self.fc2(y), deterministic=det, rngs=rngs)


class ViT(nnx.Module):
  """ViT with learned position embeddings and mean-pooled tokens (no class token)."""

  level_names = LEVELS
  # Token grids (the last after the final LayerNorm), any sign; the head reads their mean.
  feature_space = FeatureSpace(activation="none", pooled="mean")

  def __init__(self, *, dim: int, depth: int, heads: int, num_classes: int, image_size: int,
               rngs: nnx.Rngs, dtype: Any = jnp.float32, patch_size: int | None = None,
               dropout: float = 0.0):
    self.image_size = check_image_size(image_size)
    self.num_classes = num_classes
    self.dtype = dtype
    p = (16 if self.image_size > SMALL_IMAGE else 4) if patch_size is None else int(patch_size)
    if p < 1 or self.image_size % p:
      raise ValueError(f"patch_size {p} must divide image_size {self.image_size}")
    if depth < 4 or depth % 4:
      raise ValueError(f"depth must be a positive multiple of 4 (one stage per quarter), "
                       f"got {depth}")
    if heads < 1 or dim % heads:
      raise ValueError(f"heads ({heads}) must divide the width ({dim}); change width or pass "
                       "num_heads=")
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    self.patch_size, self.grid = p, self.image_size // p
    self.dropout = float(dropout)
    self.stage_ends = tuple(depth * k // 4 for k in (1, 2, 3, 4))
    self.patch_embed = nnx.Conv(3, dim, (p, p), strides=p, padding="VALID",
                                kernel_init=_patch_init, dtype=dtype, rngs=rngs)
    self.pos_embed = nnx.Param(
        nnx.initializers.normal(0.02)(rngs.params(), (1, self.grid**2, dim), jnp.float32))
    self.drop = nnx.Dropout(dropout)
    self.blocks = nnx.List([EncoderBlock(dim, heads, dropout, dtype=dtype, rngs=rngs)
                            for _ in range(depth)])
    self.norm = _ln(dim, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(dim, num_classes, kernel_init=_head_init, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool, rngs: Any = None):
    rngs = stochastic_rngs(rngs, train=train, stochastic=self.dropout > 0,
                           model=type(self).__name__)
    x = self.patch_embed(x)
    n, h, w, d = x.shape
    if h * w != self.grid**2:
      raise ValueError(f"ViT built for {self.image_size} px ({self.grid}x{self.grid} patches) "
                       f"got a {h}x{w} patch grid")
    x = x.reshape(n, h * w, d) + self.pos_embed[...].astype(x.dtype)
    x = self.drop(x, deterministic=not train, rngs=rngs)
    feats = {}
    for i, blk in enumerate(self.blocks):
      x = blk(x, train=train, rngs=rngs)
      if i + 1 in self.stage_ends[:3]:
        feats[f"stage{self.stage_ends.index(i + 1) + 1}"] = x.reshape(n, h, w, d)
    x = self.norm(x)
    feats["stage4"] = x.reshape(n, h, w, d)
    feats["pooled"] = x.mean(axis=1)
    return self.head(feats["pooled"]).astype(jnp.float32), feats


def _factory(name: str, dim: int, depth: int, heads: int):
  def make(*, num_classes: int, image_size: int, rngs: nnx.Rngs, dtype: Any = jnp.float32,
           patch_size: int | None = None, width: float = 1.0, depth: int | None = None,
           num_heads: int | None = None, dropout: float = 0.0) -> ViT:
    w = check_width(width)
    return ViT(dim=scaled(dim, w), depth=default_depth if depth is None else int(depth),
               heads=max(1, round(heads * w)) if num_heads is None else int(num_heads),
               num_classes=num_classes, image_size=image_size, rngs=rngs, dtype=dtype,
               patch_size=patch_size, dropout=dropout)

  default_depth = depth
  make.__name__ = make.__qualname__ = name
  make.__doc__ = (f"{name}: dim {dim}, depth {depth}, heads {heads}; `width` scales dim and "
                  "heads (round, at least 1), `depth`/`num_heads` override.")
  return make


vit_ti = _factory("vit_ti", 192, 12, 3)
vit_s = _factory("vit_s", 384, 12, 6)
