"""Bits shared by the backbones: level names, width scaling, dropout keys, drop-path.

Every backbone returns the same feature levels so fusion and distillation code can stay generic.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

# The feature levels every model returns, shallow to deep; `pooled` is what the head reads.
LEVELS = ("stage1", "stage2", "stage3", "stage4", "pooled")
MAP_LEVELS = LEVELS[:4]  # the NHWC map levels; a joint teacher fuses at one of them


@dataclasses.dataclass(frozen=True)
class FeatureSpace:
  """What a backbone's level features look like, so a joint teacher can emit the same kind.

  `activation` ends every map level: `relu` (a ResNet block's output, never negative) or `none`
  (a residual stream, any sign). `pooled` says how the dense level comes from the last map:
  `mean` (global average pool) or `mean_layernorm` (the pool, then a LayerNorm: ConvNeXt).
  A student can only match a target that lives in its own space (see models/fusion.py).
  """

  activation: str
  pooled: str

  def __post_init__(self):
    if self.activation not in ("relu", "none"):
      raise ValueError(f"FeatureSpace.activation {self.activation!r}; valid: relu, none")
    if self.pooled not in ("mean", "mean_layernorm"):
      raise ValueError(f"FeatureSpace.pooled {self.pooled!r}; valid: mean, mean_layernorm")


# Images at most this large get the small-image (CIFAR-style) stem.
SMALL_IMAGE = 64


def scaled(channels: int, width: float) -> int:
  """`channels * width`, rounded, at least 1: one rule for every family's `width` kwarg."""
  return max(1, int(round(channels * width)))


def check_width(width: float) -> float:
  if not width > 0:
    raise ValueError(f"width must be > 0, got {width!r}")
  return float(width)


def check_image_size(image_size: int) -> int:
  if int(image_size) != image_size or image_size < 1:
    raise ValueError(f"image_size must be a positive int, got {image_size!r}")
  return int(image_size)


def stochastic_rngs(rngs: Any, *, train: bool, stochastic: bool, model: str) -> nnx.Rngs | None:
  """The Rngs to draw dropout / drop-path keys from, or None when the call is deterministic.

  Keys come from the call, never from state stored in the model, so a split/merged model stays a
  pure function of (params, batch_stats, x, rngs). A bare key is wrapped so every layer draws its
  own subkey instead of reusing one.
  """
  if not (train and stochastic):
    return None
  if rngs is None:
    raise ValueError(
        f"{model}: train=True with dropout/drop-path > 0 needs rngs "
        "(an nnx.Rngs with a 'dropout' stream, or a jax.random key)"
    )
  if isinstance(rngs, nnx.Rngs):
    return rngs
  if isinstance(rngs, (jax.Array, int)):
    return nnx.Rngs(dropout=rngs)
  raise TypeError(f"{model}: rngs must be an nnx.Rngs or a jax.random key, got {type(rngs)}")


def drop_path(x: jax.Array, rate: float, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
  """Stochastic depth: drops a residual branch for whole samples (rescaled to keep the mean)."""
  if not train or rate == 0.0:
    return x
  keep = 1.0 - rate
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  mask = jax.random.bernoulli(rngs["dropout"](), keep, shape)
  return jnp.where(mask, x / keep, jnp.zeros_like(x))
