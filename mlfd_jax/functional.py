"""Pure-function layers on plain-dict params, shared by distillation adaptors, probes and fusion.

They take and return `jax.Array`s and keep no state, so a method can own its adaptors as a dict
of params and a probe can be an `.npz` of two arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def linear_init(key, cin: int, cout: int) -> dict[str, jax.Array]:
  """LeCun-normal kernel and zero bias for a 1x1 conv / dense adaptor."""
  kernel = jax.random.normal(key, (cin, cout), jnp.float32) / jnp.sqrt(cin)
  return {"kernel": kernel, "bias": jnp.zeros((cout,), jnp.float32)}


def linear_apply(p, x):
  """A 1x1 conv on NHWC maps or a dense layer on vectors: contracts the last axis."""
  return jnp.einsum("...c,cd->...d", x.astype(jnp.float32), p["kernel"]) + p["bias"]


def resize_map(x, hw: tuple[int, int]):
  """Bilinear resize of an NHWC map to spatial size `hw` (no-op if it already has it)."""
  if tuple(x.shape[1:3]) == tuple(hw):
    return x
  return jax.image.resize(x, (x.shape[0], *hw, x.shape[3]), method="bilinear", antialias=True)
