"""The trainable part of MLFD's joint teacher: adaptors, fusion layers, one head per dataset.

The frozen teachers run outside this module (see `stages/joint.py`); it receives each
teacher's feature map at the fusion level l1 and

1. adapts each map to a common width (BatchNorm + 1x1 conv, one adaptor per teacher),
2. resizes the adapted maps to the reference student's grid at l1 and concatenates them,
3. maps the concatenation to the student's width at l1 (1x1 conv): the fused map M^{l1},
4. goes one level deeper at a time (BN, GELU, 3x3 conv with stride = the spatial ratio, BN,
   GELU, 1x1 conv to the student's width), emitting M^l with the student's shape at each level,
5. average-pools the last map into the dense level `pooled` (projected to the student's pooled
   width when it differs), then dropout and one linear head per dataset.

`target_shapes` (the reference student's level shapes, `{level: (H, W, C) or (D,)}`) fix every
size, so the emitted maps can be compared with the student's features directly.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

MAP_LEVELS = ("stage1", "stage2", "stage3", "stage4")


def resize_map(x, hw: tuple[int, int]):
  """Bilinear resize of an NHWC map to spatial size `hw` (no-op if it already has it)."""
  if tuple(x.shape[1:3]) == tuple(hw):
    return x
  return jax.image.resize(x, (x.shape[0], *hw, x.shape[3]), method="bilinear", antialias=True)


class _Down(nnx.Module):
  """One level deeper: BN-GELU-conv3x3(stride)-BN-GELU-conv1x1."""

  def __init__(self, cin: int, cout: int, stride: int, *, dtype, rngs: nnx.Rngs):
    self.bn1 = nnx.BatchNorm(cin, momentum=0.9, rngs=rngs)
    self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, padding="SAME", use_bias=False,
                          dtype=dtype, rngs=rngs)
    self.bn2 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
    self.conv2 = nnx.Conv(cout, cout, (1, 1), dtype=dtype, rngs=rngs)

  def __call__(self, x, *, train: bool):
    x = self.conv1(nnx.gelu(self.bn1(x, use_running_average=not train)))
    return self.conv2(nnx.gelu(self.bn2(x, use_running_average=not train)))


class _Adaptor(nnx.Module):
  """BatchNorm + 1x1 conv from one teacher's width to the common width."""

  def __init__(self, cin: int, cout: int, *, dtype, rngs: nnx.Rngs):
    self.bn = nnx.BatchNorm(cin, momentum=0.9, rngs=rngs)
    self.conv = nnx.Conv(cin, cout, (1, 1), dtype=dtype, rngs=rngs)

  def __call__(self, x, *, train: bool):
    return self.conv(self.bn(x, use_running_average=not train))


class FusionHead(nnx.Module):
  """Teachers' l1 maps -> student-shaped maps at l1..stage4, `pooled`, and per-dataset logits."""

  def __init__(self, *, teacher_widths: Sequence[int], fusion_level: str,
               target_shapes: dict[str, tuple[int, ...]], num_classes: Sequence[int],
               width: int, dropout: float, rngs: nnx.Rngs, dtype=jnp.float32):
    if fusion_level not in MAP_LEVELS:
      raise ValueError(f"fusion_level {fusion_level!r} is not a map level; valid: "
                       f"{', '.join(MAP_LEVELS)}")
    self.fusion_level = fusion_level
    self.map_levels = MAP_LEVELS[MAP_LEVELS.index(fusion_level):]
    self.level_names = (*self.map_levels, "pooled")
    self.target_shapes = {k: tuple(v) for k, v in target_shapes.items()}
    self.num_heads = len(num_classes)
    self.image_size = None
    self.dtype = dtype
    self.adaptors = nnx.List([_Adaptor(c, width, dtype=dtype, rngs=rngs) for c in teacher_widths])
    first = self.target_shapes[fusion_level]
    self.merge = nnx.Conv(width * len(teacher_widths), first[-1], (1, 1), dtype=dtype, rngs=rngs)
    downs = []
    for prev, level in zip(self.map_levels, self.map_levels[1:]):
      (h0, _, c0), (h1, _, c1) = self.target_shapes[prev], self.target_shapes[level]
      stride = max(1, round(h0 / h1))
      if 2 ** round(math.log2(stride)) != stride:
        raise ValueError(f"cannot go from {prev} ({h0} px) to {level} ({h1} px) with stride-2 "
                         f"convs; the reference student's levels do not nest")
      downs.append(_Down(c0, c1, stride, dtype=dtype, rngs=rngs))
    self.downs = nnx.List(downs)
    last_width = self.target_shapes[self.map_levels[-1]][-1]
    pooled_width = self.target_shapes["pooled"][-1]
    self.pool_norm = nnx.BatchNorm(last_width, momentum=0.9, rngs=rngs)
    self.project = (nnx.Linear(last_width, pooled_width, dtype=dtype, rngs=rngs)
                    if pooled_width != last_width else None)
    self.dropout = nnx.Dropout(dropout)
    self.heads = nnx.List([nnx.Linear(pooled_width, n, dtype=dtype, rngs=rngs)
                           for n in num_classes])

  def __call__(self, teacher_maps: Sequence[jax.Array], *, train: bool, rngs=None):
    """Returns (list of logits, one per head; dict of fused levels)."""
    grid = self.target_shapes[self.fusion_level][:2]
    adapted = [resize_map(a(m.astype(self.dtype), train=train), grid)
               for a, m in zip(self.adaptors, teacher_maps)]
    x = self.merge(jnp.concatenate(adapted, axis=-1))
    feats = {self.fusion_level: x}
    for level, down in zip(self.map_levels[1:], self.downs):
      x = down(x, train=train)
      x = resize_map(x, self.target_shapes[level][:2])  # exact when the strides nest
      feats[level] = x
    pooled = jnp.mean(nnx.gelu(self.pool_norm(x, use_running_average=not train)), axis=(1, 2))
    if self.project is not None:
      pooled = self.project(pooled)
    feats["pooled"] = pooled
    h = self.dropout(pooled, deterministic=not train, rngs=rngs)
    return [head(h).astype(jnp.float32) for head in self.heads], feats
