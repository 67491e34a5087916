"""The interface every distillation method implements, and its registry.

A method is a small object built from `config.distill`. It owns any learned adaptors (they live
in the method, not in the student backbone, and are dropped from the exported student) and
computes the student's loss from the student's and the teacher's outputs on the same batch:

  source             'joint' (the joint teacher's (logits, feats) on the student's head) or
                     'teachers' (a list with each frozen stage-1 teacher's (logits, feats); the
                     logits are on the student's label space, see stages/probes.py)
  needs_teacher_logits   (source 'teachers' only) whether the loss reads the teachers' logits;
                     only then do teachers trained on another dataset get linear probes
  init(key) -> method params (pure dict, trained with the student; {} if none)
  loss(method_params, student=(logits, feats), teacher=..., labels, step)
      -> (scalar loss, {term name: value})   every term, per level, is returned for logging
  gate_updates(method_updates, step)   optional: zeroes the optimizer's updates of method params
      that a schedule freezes (amtml's theta and W after the weighting phase)

A run of a method is named by `distill.name` (default: the method): students of different runs
share one workdir's teachers and joint teacher, each in its own directory and results key.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from mlfd_jax.registry import Registry

METHODS: Registry = Registry("distillation method")


DEFAULT = "mlfd"  # its students keep the plain `students/<dataset>` and `student` names


class Method(Protocol):
  name: str
  source: str

  def init(self, key) -> dict[str, Any]: ...

  def loss(self, params, *, student, teacher, labels, step) -> tuple[jax.Array, dict[str, Any]]:
    ...


def build_method(distill_cfg, *, student_shapes: dict, teacher_shapes,
                 total_steps: int | None = None) -> Method:
  """`config.distill.method` -> a method for a student/teacher pair of these level shapes
  (`teacher_shapes`: the joint teacher's dict, or a list of dicts, one per teacher).
  `total_steps` reaches the methods whose schedule needs it (amtml's weighting phase)."""
  cls = METHODS.get(distill_cfg.method)
  extra = {"total_steps": total_steps} \
      if "total_steps" in inspect.signature(cls).parameters else {}
  return cls(distill_cfg, student_shapes=student_shapes, teacher_shapes=teacher_shapes, **extra)


def check_config(distill_cfg) -> None:
  """Fails early, in one line, on an unknown method or a bad run name."""
  METHODS.get(distill_cfg.method)
  run_name(distill_cfg)


def method_source(distill_cfg) -> str:
  """What a method distils from, known before any model is built."""
  return getattr(METHODS.get(distill_cfg.method), "source", "joint")


def needs_teacher_logits(distill_cfg) -> bool:
  """Whether a `source='teachers'` method reads the teachers' logits (and so needs probes)."""
  return bool(getattr(METHODS.get(distill_cfg.method), "needs_teacher_logits", True))


def run_name(distill_cfg) -> str:
  """`distill.name`, else the method's name: what a run's directory and results key say."""
  name = str(distill_cfg.get("name", "") or distill_cfg.method)
  if not name.replace("_", "").replace("-", "").isalnum():
    raise ValueError(f"distill.name={name!r} must be letters, digits, '_' or '-'")
  return name


def results_key(distill_cfg) -> str:
  """`student` for the default method, `student_<run>` for the others."""
  run = run_name(distill_cfg)
  return "student" if run == DEFAULT else f"student_{run}"


def stage_dirname(distill_cfg) -> str:
  """`students` for the default method, `students_<run>` for the others."""
  run = run_name(distill_cfg)
  return "students" if run == DEFAULT else f"students_{run}"


def linear_init(key, cin: int, cout: int) -> dict[str, jax.Array]:
  """LeCun-normal kernel and zero bias for a 1x1 conv / dense adaptor."""
  kernel = jax.random.normal(key, (cin, cout), jnp.float32) / jnp.sqrt(cin)
  return {"kernel": kernel, "bias": jnp.zeros((cout,), jnp.float32)}


def linear_apply(p, x):
  """A 1x1 conv on NHWC maps or a dense layer on vectors: contracts the last axis."""
  return jnp.einsum("...c,cd->...d", x.astype(jnp.float32), p["kernel"]) + p["bias"]
