"""ResNet-18/34 (basic blocks) and ResNet-50 (bottleneck), torchvision layout (v1.5: the stride
sits on the bottleneck's 3x3 conv), with a CIFAR stem for small images.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mlfd_jax.models.layers import (LEVELS, SMALL_IMAGE, FeatureSpace, check_image_size,
                                    check_width, scaled)

# torchvision's inits: kaiming_normal_(mode='fan_out') for convs, nn.Linear's default for the head.
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
_head_init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
_BASE_WIDTHS = (64, 128, 256, 512)


def _conv(cin, cout, k, stride, *, dtype, rngs):
  # Explicit PyTorch-style padding k//2: XLA's 'SAME' pads stride-2 convs asymmetrically.
  return nnx.Conv(cin, cout, (k, k), strides=stride, padding=k // 2, use_bias=False,
                  kernel_init=_conv_init, dtype=dtype, rngs=rngs)


def _bn(c, *, dtype, rngs, zero=False):
  # momentum 0.9 == PyTorch's 0.1; statistics are computed in float32 whatever `dtype` is.
  return nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, dtype=dtype,
                       scale_init=nnx.initializers.zeros if zero else nnx.initializers.ones,
                       rngs=rngs)


class _Shortcut(nnx.Module):
  """1x1 conv + BN projection, used when a block changes stride or width."""

  def __init__(self, cin, cout, stride, *, dtype, rngs):
    self.conv = _conv(cin, cout, 1, stride, dtype=dtype, rngs=rngs)
    self.bn = _bn(cout, dtype=dtype, rngs=rngs)

  def __call__(self, x, *, train):
    return self.bn(self.conv(x), use_running_average=not train)


class BasicBlock(nnx.Module):
  expansion = 1

  def __init__(self, cin, planes, stride, *, zero_init, dtype, rngs):
    cout = planes * self.expansion
    self.conv1 = _conv(cin, planes, 3, stride, dtype=dtype, rngs=rngs)
    self.bn1 = _bn(planes, dtype=dtype, rngs=rngs)
    self.conv2 = _conv(planes, cout, 3, 1, dtype=dtype, rngs=rngs)
    self.bn2 = _bn(cout, dtype=dtype, rngs=rngs, zero=zero_init)
    self.shortcut = (_Shortcut(cin, cout, stride, dtype=dtype, rngs=rngs)
                     if stride != 1 or cin != cout else None)

  def __call__(self, x, *, train):
    ura = not train
    y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = self.bn2(self.conv2(y), use_running_average=ura)
    s = x if self.shortcut is None else self.shortcut(x, train=train)
    return nnx.relu(y + s)


class Bottleneck(nnx.Module):
  expansion = 4

  def __init__(self, cin, planes, stride, *, zero_init, dtype, rngs):
    cout = planes * self.expansion
    self.conv1 = _conv(cin, planes, 1, 1, dtype=dtype, rngs=rngs)
    self.bn1 = _bn(planes, dtype=dtype, rngs=rngs)
    self.conv2 = _conv(planes, planes, 3, stride, dtype=dtype, rngs=rngs)
    self.bn2 = _bn(planes, dtype=dtype, rngs=rngs)
    self.conv3 = _conv(planes, cout, 1, 1, dtype=dtype, rngs=rngs)
    self.bn3 = _bn(cout, dtype=dtype, rngs=rngs, zero=zero_init)
    self.shortcut = (_Shortcut(cin, cout, stride, dtype=dtype, rngs=rngs)
                     if stride != 1 or cin != cout else None)

  def __call__(self, x, *, train):
    ura = not train
    y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = nnx.relu(self.bn2(self.conv2(y), use_running_average=ura))
    y = self.bn3(self.conv3(y), use_running_average=ura)
    s = x if self.shortcut is None else self.shortcut(x, train=train)
    return nnx.relu(y + s)


class ResNet(nnx.Module):
  """ResNet returning logits and the output of each of its four stages.

  `image_size <= 64` selects the CIFAR stem (3x3/1 conv, no max-pool: stage strides 1,2,4,8);
  larger images get the ImageNet stem (7x7/2 conv + 3x3/2 max-pool: strides 4,8,16,32).
  """

  level_names = LEVELS
  # Every stage ends with a block's ReLU; the head reads the average pool of stage4.
  feature_space = FeatureSpace(activation="relu", pooled="mean")

  def __init__(self, *, block: type, stage_sizes, num_classes: int, image_size: int,
               rngs: nnx.Rngs, dtype: Any = jnp.float32, width: float = 1.0,
               zero_init_residual: bool = False):
    self.image_size = check_image_size(image_size)
    self.num_classes = num_classes
    self.dtype = dtype
    width = check_width(width)
    self.small_stem = self.image_size <= SMALL_IMAGE
    stem = scaled(64, width)
    self.stem_conv = _conv(3, stem, 3 if self.small_stem else 7, 1 if self.small_stem else 2,
                           dtype=dtype, rngs=rngs)
    self.stem_bn = _bn(stem, dtype=dtype, rngs=rngs)
    cin, stages = stem, []
    for i, (n, base) in enumerate(zip(stage_sizes, _BASE_WIDTHS)):
      planes = scaled(base, width)
      blocks = []
      for j in range(n):
        stride = 2 if i > 0 and j == 0 else 1
        blocks.append(block(cin, planes, stride, zero_init=zero_init_residual, dtype=dtype,
                            rngs=rngs))
        cin = planes * block.expansion
      stages.append(nnx.List(blocks))
    self.stages = nnx.List(stages)
    self.head = nnx.Linear(cin, num_classes, kernel_init=_head_init, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool, rngs: Any = None):
    del rngs  # Nothing random in a ResNet.
    x = nnx.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train))
    if not self.small_stem:
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    feats = {}
    for i, stage in enumerate(self.stages):
      for blk in stage:
        x = blk(x, train=train)
      feats[f"stage{i + 1}"] = x
    feats["pooled"] = x.mean(axis=(1, 2))
    return self.head(feats["pooled"]).astype(jnp.float32), feats


def _factory(name: str, block: type, stage_sizes: tuple[int, ...]):
  def make(*, num_classes: int, image_size: int, rngs: nnx.Rngs, dtype: Any = jnp.float32,
           width: float = 1.0, zero_init_residual: bool = False) -> ResNet:
    return ResNet(block=block, stage_sizes=stage_sizes, num_classes=num_classes,
                  image_size=image_size, rngs=rngs, dtype=dtype, width=width,
                  zero_init_residual=zero_init_residual)

  make.__name__ = make.__qualname__ = name
  make.__doc__ = f"{name}: {block.__name__} x {stage_sizes}; `width` scales every channel count."
  return make


resnet18 = _factory("resnet18", BasicBlock, (2, 2, 2, 2))
resnet34 = _factory("resnet34", BasicBlock, (3, 4, 6, 3))
resnet50 = _factory("resnet50", Bottleneck, (3, 4, 6, 3))
