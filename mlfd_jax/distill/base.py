"""The interface every distillation method implements, and its registry.

A method is a small object built from `config.distill`. It owns any learned adaptors (they live
in the method, not in the student backbone, and are dropped from the exported student) and
computes the student's loss from the student's and the teacher's outputs on the same batch:

  init(key) -> method params (pure dict, trained with the student; {} if none)
  loss(method_params, student=(logits, feats), teacher=(logits, feats), labels)
      -> (scalar loss, {term name: value})   every term, per level, is returned for logging
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp

from mlfd_jax.registry import Registry

METHODS: Registry = Registry("distillation method")


class Method(Protocol):
  name: str

  def init(self, key) -> dict[str, Any]: ...

  def loss(self, params, *, student, teacher, labels) -> tuple[jax.Array, dict[str, Any]]: ...


def build_method(distill_cfg, *, student_shapes: dict, teacher_shapes: dict) -> Method:
  """`config.distill.method` -> a method for a student/teacher pair of these level shapes."""
  return METHODS.get(distill_cfg.method)(distill_cfg, student_shapes=student_shapes,
                                         teacher_shapes=teacher_shapes)


def linear_init(key, cin: int, cout: int) -> dict[str, jax.Array]:
  """LeCun-normal kernel and zero bias for a 1x1 conv / dense adaptor."""
  kernel = jax.random.normal(key, (cin, cout), jnp.float32) / jnp.sqrt(cin)
  return {"kernel": kernel, "bias": jnp.zeros((cout,), jnp.float32)}


def linear_apply(p, x):
  """A 1x1 conv on NHWC maps or a dense layer on vectors: contracts the last axis."""
  return jnp.einsum("...c,cd->...d", x.astype(jnp.float32), p["kernel"]) + p["bias"]
