"""ConvNeXt (Liu et al. 2022) in NHWC, with a 2x2 stem for small images."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mlfd_jax.models.depthwise import DepthwiseConv
from mlfd_jax.models.layers import (LEVELS, SMALL_IMAGE, FeatureSpace, check_image_size,
                                    check_width, drop_path, scaled, stochastic_rngs)

# ConvNeXt inits every conv and linear with timm's trunc_normal_(std=.02), which cuts at +-2
# (100 sigma): a plain normal. JAX's truncated_normal would cut at 2 sigma.
_init = nnx.initializers.normal(0.02)


def _ln(dim, *, dtype, rngs):
  return nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)


class Block(nnx.Module):
  """7x7 depthwise conv -> LN -> Linear 4x -> GELU -> Linear -> layer scale -> drop-path."""

  def __init__(self, dim, drop_rate, *, dtype, rngs, depthwise: str = "auto"):
    self.dwconv = DepthwiseConv(dim, 7, impl=depthwise, kernel_init=_init, dtype=dtype,
                                rngs=rngs)
    self.norm = _ln(dim, dtype=dtype, rngs=rngs)
    self.fc1 = nnx.Linear(dim, 4 * dim, kernel_init=_init, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(4 * dim, dim, kernel_init=_init, dtype=dtype, rngs=rngs)
    # Layer scale starts tiny so each block starts close to the identity.
    self.gamma = nnx.Param(jnp.full((dim,), 1e-6, jnp.float32))
    self.drop_rate = drop_rate

  def __call__(self, x, *, train, rngs):
    y = self.fc2(nnx.gelu(self.fc1(self.norm(self.dwconv(x))), approximate=False))
    y = y * self.gamma[...].astype(y.dtype)
    return x + drop_path(y, self.drop_rate, train=train, rngs=rngs)


class _Downsample(nnx.Module):
  """LayerNorm + 2x2 stride-2 conv between stages."""

  def __init__(self, cin, cout, *, dtype, rngs):
    self.norm = _ln(cin, dtype=dtype, rngs=rngs)
    self.conv = nnx.Conv(cin, cout, (2, 2), strides=2, padding="VALID", kernel_init=_init,
                         dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.conv(self.norm(x))


class ConvNeXt(nnx.Module):
  """ConvNeXt returning logits and the output of each of its four stages.

  Stem: 4x4 stride-4 patchify (stage strides 4,8,16,32), or 2x2 stride-2 when
  `image_size <= 64` (strides 2,4,8,16, so 32 px gives a 2x2 stage4).
  """

  level_names = LEVELS
  # Stages end on the residual stream (any sign); the head reads LayerNorm(pool(stage4)).
  feature_space = FeatureSpace(activation="none", pooled="mean_layernorm")

  def __init__(self, *, depths: Sequence[int], dims: Sequence[int], num_classes: int,
               image_size: int, rngs: nnx.Rngs, dtype: Any = jnp.float32,
               drop_path: float = 0.0, depthwise: str = "auto"):
    depths, dims = tuple(int(d) for d in depths), tuple(int(d) for d in dims)
    if len(depths) != 4 or min(depths) < 0:
      raise ValueError(f"depths must be 4 non-negative ints, got {depths!r}")
    if not 0.0 <= drop_path < 1.0:
      raise ValueError(f"drop_path must be in [0, 1), got {drop_path!r}")
    self.image_size = check_image_size(image_size)
    self.num_classes = num_classes
    self.dtype = dtype
    self.drop_path = float(drop_path)
    patch = 2 if self.image_size <= SMALL_IMAGE else 4
    self.stem_conv = nnx.Conv(3, dims[0], (patch, patch), strides=patch, padding="VALID",
                              kernel_init=_init, dtype=dtype, rngs=rngs)
    self.stem_norm = _ln(dims[0], dtype=dtype, rngs=rngs)
    self.downsample = nnx.List(
        [_Downsample(dims[i - 1], dims[i], dtype=dtype, rngs=rngs) for i in range(1, 4)])
    # Drop-path rate grows linearly with depth, as in the paper (plain Python: no tracing).
    n = sum(depths)
    rates = [drop_path * j / max(n - 1, 1) for j in range(n)]
    stages, k = [], 0
    for depth, dim in zip(depths, dims):
      stages.append(nnx.List([Block(dim, rates[k + j], dtype=dtype, rngs=rngs,
                                    depthwise=depthwise) for j in range(depth)]))
      k += depth
    self.stages = nnx.List(stages)
    self.norm = _ln(dims[-1], dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(dims[-1], num_classes, kernel_init=_init, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool, rngs: Any = None):
    rngs = stochastic_rngs(rngs, train=train, stochastic=self.drop_path > 0,
                           model=type(self).__name__)
    x = self.stem_norm(self.stem_conv(x))
    feats = {}
    for i, stage in enumerate(self.stages):
      if i > 0:
        x = self.downsample[i - 1](x)
      for blk in stage:
        x = blk(x, train=train, rngs=rngs)
      feats[f"stage{i + 1}"] = x
    feats["pooled"] = self.norm(x.mean(axis=(1, 2)))
    return self.head(feats["pooled"]).astype(jnp.float32), feats


def _factory(name: str, depths: tuple[int, ...], dims: tuple[int, ...]):
  def make(*, num_classes: int, image_size: int, rngs: nnx.Rngs, dtype: Any = jnp.float32,
           width: float = 1.0, depths: Sequence[int] | None = None,
           drop_path: float = 0.0, depthwise: str = "auto") -> ConvNeXt:
    w = check_width(width)
    return ConvNeXt(depths=default_depths if depths is None else depths,
                    dims=[scaled(d, w) for d in dims], num_classes=num_classes,
                    image_size=image_size, rngs=rngs, dtype=dtype, drop_path=drop_path,
                    depthwise=depthwise)

  default_depths = depths
  make.__name__ = make.__qualname__ = name
  make.__doc__ = (f"{name}: depths {depths}, dims {dims}; `width` scales dims, `depths` "
                  "overrides the blocks per stage, `depthwise` picks how the 7x7 depthwise "
                  "convs run (models/depthwise.py: auto, shifts, xla).")
  return make


convnext_atto = _factory("convnext_atto", (2, 2, 6, 2), (40, 80, 160, 320))
convnext_tiny = _factory("convnext_tiny", (3, 3, 9, 3), (96, 192, 384, 768))
