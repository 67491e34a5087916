"""The trainable part of MLFD's joint teacher: adaptors, fusion layers, one head per dataset.

The frozen teachers run outside this module (see `joint_teacher.py`); it receives each
teacher's feature map at the fusion level l1 and

1. adapts each map to a common width (BatchNorm + 1x1 conv, one adaptor per teacher),
2. resizes the adapted maps to the reference student's grid at l1 and concatenates them,
3. maps the concatenation to the student's width at l1 (1x1 conv, BN, the student's activation):
   the fused map M^{l1},
4. goes one level deeper at a time (3x3 conv with stride = the spatial ratio, BN, GELU, 1x1 conv
   to the student's width, BN, the student's activation), emitting M^l with the student's shape,
5. pools the last map into the dense level `pooled` the way the student does (its mean, with a
   LayerNorm after it for a ConvNeXt), then dropout and one linear head per dataset.

Every emitted level lives in the reference student's feature space (`FeatureSpace`): after a
ReLU where a ResNet's stage ends with one, so the target is never negative where the student's
feature cannot be; and `pooled` is the pool of the emitted last map, as the student's is of its
own, so the last map and the dense level are one consistent target. (The reference code emits
GELU(BN(conv)) maps, which a ReLU student cannot match where they are negative.)

`target_shapes` (the reference student's level shapes, `{level: (H, W, C) or (D,)}`) fix every
size, so the emitted maps can be compared with the student's features directly.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mlfd_jax.functional import resize_map
from mlfd_jax.models.layers import MAP_LEVELS, FeatureSpace


def _activate(x, space: FeatureSpace):
  return nnx.relu(x) if space.activation == "relu" else x


class _Emit(nnx.Module):
  """The last op of every emitted level: BN, then the student's activation at that level."""

  def __init__(self, c: int, space: FeatureSpace, *, rngs: nnx.Rngs):
    self.bn = nnx.BatchNorm(c, momentum=0.9, rngs=rngs)
    self.space = space

  def __call__(self, x, *, train: bool):
    return _activate(self.bn(x, use_running_average=not train), self.space)


class _Down(nnx.Module):
  """One level deeper: conv3x3(stride)-BN-GELU-conv1x1, then the level's BN + activation."""

  def __init__(self, cin: int, cout: int, stride: int, space: FeatureSpace, *, dtype,
               rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, padding="SAME", use_bias=False,
                          dtype=dtype, rngs=rngs)
    self.bn1 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
    self.conv2 = nnx.Conv(cout, cout, (1, 1), use_bias=False, dtype=dtype, rngs=rngs)
    self.emit = _Emit(cout, space, rngs=rngs)

  def __call__(self, x, *, train: bool):
    x = nnx.gelu(self.bn1(self.conv1(x), use_running_average=not train))
    return self.emit(self.conv2(x), train=train)


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
               target_shapes: dict[str, tuple[int, ...]], target_space: FeatureSpace,
               num_classes: Sequence[int], width: int, dropout: float, rngs: nnx.Rngs,
               dtype=jnp.float32):
    if fusion_level not in MAP_LEVELS:
      raise ValueError(f"fusion_level {fusion_level!r} is not a map level; valid: "
                       f"{', '.join(MAP_LEVELS)}")
    self.fusion_level = fusion_level
    self.map_levels = MAP_LEVELS[MAP_LEVELS.index(fusion_level):]
    self.level_names = (*self.map_levels, "pooled")
    self.target_shapes = {k: tuple(v) for k, v in target_shapes.items()}
    self.num_heads = len(num_classes)
    self.dtype = dtype
    self.adaptors = nnx.List([_Adaptor(c, width, dtype=dtype, rngs=rngs) for c in teacher_widths])
    first = self.target_shapes[fusion_level]
    self.merge = nnx.Conv(width * len(teacher_widths), first[-1], (1, 1), use_bias=False,
                          dtype=dtype, rngs=rngs)
    self.merge_emit = _Emit(first[-1], target_space, rngs=rngs)
    downs = []
    for prev, level in zip(self.map_levels, self.map_levels[1:]):
      (h0, _, c0), (h1, _, c1) = self.target_shapes[prev], self.target_shapes[level]
      stride = max(1, round(h0 / h1))
      if 2 ** round(math.log2(stride)) != stride:
        raise ValueError(f"cannot go from {prev} ({h0} px) to {level} ({h1} px) with stride-2 "
                         f"convs; the reference student's levels do not nest")
      downs.append(_Down(c0, c1, stride, target_space, dtype=dtype, rngs=rngs))
    self.downs = nnx.List(downs)
    last_width = self.target_shapes[self.map_levels[-1]][-1]
    pooled_width = self.target_shapes["pooled"][-1]
    if pooled_width != last_width:
      raise ValueError(f"the reference student's pooled width ({pooled_width}) is not its last "
                       f"map's ({last_width}); its dense level is not a pool of that map")
    self.pool_norm = (nnx.LayerNorm(last_width, epsilon=1e-6, dtype=dtype, rngs=rngs)
                      if target_space.pooled == "mean_layernorm" else None)
    self.dropout = nnx.Dropout(dropout)
    self.heads = nnx.List([nnx.Linear(pooled_width, n, dtype=dtype, rngs=rngs)
                           for n in num_classes])

  def __call__(self, teacher_maps: Sequence[jax.Array], *, train: bool, rngs=None):
    """Returns (list of logits, one per head; dict of fused levels)."""
    grid = self.target_shapes[self.fusion_level][:2]
    adapted = [resize_map(a(m.astype(self.dtype), train=train), grid)
               for a, m in zip(self.adaptors, teacher_maps)]
    x = self.merge_emit(self.merge(jnp.concatenate(adapted, axis=-1)), train=train)
    feats = {self.fusion_level: x}
    for level, down in zip(self.map_levels[1:], self.downs):
      x = down(x, train=train)
      x = resize_map(x, self.target_shapes[level][:2])  # exact when the strides nest
      feats[level] = x
    pooled = jnp.mean(x, axis=(1, 2))
    if self.pool_norm is not None:
      pooled = self.pool_norm(pooled)
    feats["pooled"] = pooled
    h = self.dropout(pooled, deterministic=not train, rngs=rngs)
    return [head(h).astype(jnp.float32) for head in self.heads], feats
