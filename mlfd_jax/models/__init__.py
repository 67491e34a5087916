"""Model zoo: every backbone returns `(logits, feats)` with the same feature levels.

`feats` has keys `stage1..stage4` (NHWC maps in the compute dtype) and `pooled` ([N, D], what the
head reads), so fusion and distillation code never special-cases a family. Strides and widths of
each level are tabulated in docs/models.md.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax.numpy as jnp
from flax import nnx

from mlfd_jax.models import convnext, resnet, vit
from mlfd_jax.models.layers import LEVELS, MAP_LEVELS, FeatureSpace
from mlfd_jax.registry import Registry

MODELS: Registry = Registry("model")
_FEATURE_SPACES: dict[str, FeatureSpace] = {}
for _module, _family, _names in ((resnet, resnet.ResNet, ("resnet18", "resnet34", "resnet50")),
                                 (convnext, convnext.ConvNeXt, ("convnext_atto", "convnext_tiny")),
                                 (vit, vit.ViT, ("vit_ti", "vit_s"))):
  for _name in _names:
    MODELS.add(_name, getattr(_module, _name))
    _FEATURE_SPACES[_name] = _family.feature_space


def feature_space(name: str) -> FeatureSpace:
  """How model `name`'s level features are made (activation, dense level): see FeatureSpace."""
  MODELS.get(name)  # an unknown name fails here, naming the valid ones
  return _FEATURE_SPACES[name]

_COMMON = ("num_classes", "image_size", "rngs", "dtype")


def model_options(name: str) -> dict[str, Any]:
  """The model-specific kwargs `name` accepts, with their defaults."""
  params = inspect.signature(MODELS.get(name)).parameters
  return {k: p.default for k, p in params.items() if k not in _COMMON}


def create_model(name: str, *, num_classes: int, image_size: int, rngs: nnx.Rngs,
                 dtype: Any = jnp.float32, **kwargs: Any) -> nnx.Module:
  """Builds model `name` for `image_size` px inputs; `dtype` is the compute dtype (params f32).

  Unknown names and unknown kwargs raise here, naming the culprit and the valid choices, because
  they usually come from a config typo.
  """
  options = model_options(name)
  unknown = sorted(set(kwargs) - set(options))
  if unknown:
    raise TypeError(f"model {name!r} got unknown option(s) {', '.join(unknown)}; "
                    f"valid: {', '.join(options) or 'none'}")
  return MODELS.get(name)(num_classes=num_classes, image_size=image_size, rngs=rngs,
                          dtype=dtype, **kwargs)


__all__ = ["LEVELS", "MAP_LEVELS", "MODELS", "FeatureSpace", "create_model", "feature_space",
           "model_options"]
