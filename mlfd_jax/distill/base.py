"""The contract every distillation method implements, and its registry.

A method is a small object built from `config.distill`. It owns any learned adaptors (they live
in the method, not in the student backbone, and are dropped from the exported student) and
computes the student's loss from the student's and the teacher's outputs on the same batch.
A subclass of `Method` declares, as class attributes:

  name                 its registry name (`config.distill.method`)
  source               `Source.JOINT`: the joint teacher's (logits, feats) on the student's head;
                       `Source.TEACHERS`: a list with each frozen stage-1 teacher's (logits, feats)
  needs_teacher_logits (TEACHERS only) whether the loss reads the teachers' logits; only then
                       do teachers trained on another dataset get linear probes (stages/probes.py)
  options_key, OPTIONS its own sub-block `config.distill.<options_key>` and that block's
                       defaults (the only place they are written; `config_lib.distill_block`
                       builds the config's block from them)

and implements `init(key)` (method params, {} if none),
`loss(params, student=(logits, feats), teacher=..., labels=..., step=...)` -> (scalar, terms),
with every term, per level, returned for logging, and `reads()`: what the loss reads of each
(logits, feats) it is given, so that a precomputed table (`distill.precompute_targets`) keeps
only that. `gate_updates(updates, step)` may zero the optimizer's updates of params a schedule
freezes (default: none); `generations(options)` is how many students are trained one after
another, each learning from the previous (default 1).

A run of a method is named by `distill.name` (default: the method): students of different runs
share one workdir's teachers and joint teacher, each in its own directory and results key.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from typing import Any, ClassVar

import jax

from mlfd_jax.registry import Registry

METHODS: Registry = Registry("distillation method")

DEFAULT = "mlfd"  # its students keep the plain `students/<dataset>` and `student` names


class Source(enum.Enum):
  """What a method's students learn from."""
  JOINT = "joint"
  TEACHERS = "teachers"


@dataclasses.dataclass(frozen=True)
class Reads:
  """What a loss reads of a teacher's (logits, feats): the logits or not, and which feature
  levels (a level a teacher does not emit is skipped)."""
  logits: bool
  levels: tuple[str, ...]

  def select(self, pair):
    logits, feats = pair
    return (logits if self.logits else None, {l: feats[l] for l in self.levels if l in feats})


@dataclasses.dataclass(frozen=True)
class MethodConfig:
  """What a method reads from `config.distill`: the loss keys shared by the logit/feature
  methods (top level of the block) and its own sub-block, defaults filled in."""
  w_kd: float
  w_feat: float
  w_ce: float
  temperature: float
  label_smoothing: float
  levels: str
  options: dict[str, Any]


class Method(abc.ABC):
  """Base class of every distillation method (see the module docstring)."""

  name: ClassVar[str]
  source: ClassVar[Source]
  needs_teacher_logits: ClassVar[bool] = False
  options_key: ClassVar[str] = ""
  OPTIONS: ClassVar[dict[str, Any]] = {}

  def __init__(self, cfg: MethodConfig, *, student_shapes: dict, teacher_shapes,
               total_steps: int):
    """`teacher_shapes`: the joint teacher's `{level: shape}`, or a list of them, one per
    teacher; `total_steps`: the student's training length (for schedules)."""
    self.cfg, self.total_steps = cfg, total_steps
    self.student_shapes, self.teacher_shapes = student_shapes, teacher_shapes

  @classmethod
  def generations(cls, options: dict[str, Any]) -> int:
    del options
    return 1

  @abc.abstractmethod
  def init(self, key) -> dict[str, Any]:
    ...

  @abc.abstractmethod
  def loss(self, params, *, student, teacher, labels, step=None
           ) -> tuple[jax.Array, dict[str, Any]]:
    ...

  @abc.abstractmethod
  def reads(self) -> Reads:
    ...

  def teacher_subset(self, teacher):
    """The method's `teacher` input cut to what `reads()` names: one (logits, feats) for
    `Source.JOINT`, a list of them for `Source.TEACHERS`."""
    reads = self.reads()
    if self.source is Source.JOINT:
      return reads.select(teacher)
    return [reads.select(pair) for pair in teacher]

  def gate_updates(self, updates, step):
    del step
    return updates


def method_class(distill_cfg) -> type[Method]:
  """The class `config.distill.method` names (one line listing the valid names if unknown)."""
  return METHODS.get(distill_cfg.method)


def method_config(distill_cfg) -> MethodConfig:
  """`config.distill` as the method it names reads it."""
  cls = method_class(distill_cfg)
  options = dict(cls.OPTIONS)
  if cls.options_key:
    given = dict(distill_cfg.get(cls.options_key, {}) or {})
    unknown = sorted(set(given) - set(options))
    if unknown:
      raise ValueError(f"distill.{cls.options_key} has unknown key(s) {', '.join(unknown)}; "
                       f"valid: {', '.join(options)}")
    options.update(given)
  return MethodConfig(w_kd=float(distill_cfg.w_kd), w_feat=float(distill_cfg.w_feat),
                      w_ce=float(distill_cfg.w_ce), temperature=float(distill_cfg.temperature),
                      label_smoothing=float(distill_cfg.get("label_smoothing", 0.0)),
                      levels=distill_cfg.get("levels", "all"), options=options)


def build_method(distill_cfg, *, student_shapes: dict, teacher_shapes, total_steps: int
                 ) -> Method:
  """`config.distill.method` -> a method for a student/teacher pair of these level shapes."""
  return method_class(distill_cfg)(method_config(distill_cfg), student_shapes=student_shapes,
                                   teacher_shapes=teacher_shapes, total_steps=int(total_steps))


def generations(distill_cfg) -> int:
  """How many students the configured run trains per dataset, one after another; fails in one
  line on an unknown method, bad options or a bad run name."""
  run_name(distill_cfg)
  return method_class(distill_cfg).generations(method_config(distill_cfg).options)


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
