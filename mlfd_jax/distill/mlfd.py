"""MLFD's student loss: logit KD + feature MSE at several levels + cross-entropy.

  L = w_kd * T^2 * KL(softmax(z_T/T) || softmax(z_S/T))
    + w_feat * sum_{l in levels} MSE(A_l(F_S^l), M_T^l)
    + w_ce * CE(z_S, y)

`levels` is `all` (every level the joint teacher emits: the paper) or a comma-separated list;
method `mlfd_last` is the last conv map only: the level the reference code distils, taken from
whatever joint teacher the workdir holds. (The reference code also fuses the teachers at that
map and trains one joint teacher per dataset: the configs' `:setting=reference`.)
A_l is identity when the student's width at l equals the joint teacher's, else a learned 1x1
conv (dense for `pooled`) owned by the method. When the spatial sizes differ (a student of
another family than the reference student), the teacher's map is resized to the student's grid.
"""

from __future__ import annotations

import jax

from mlfd_jax.distill import losses
from mlfd_jax.distill.base import METHODS, Method, Reads, Source
from mlfd_jax.functional import linear_apply, linear_init, resize_map


def resolve_levels(levels, student_shapes: dict, teacher_shapes: dict) -> tuple[str, ...]:
  """Config `levels` (`all`, `stage4`, `stage3,stage4,pooled` or a sequence) -> level names,
  checked against both models."""
  if isinstance(levels, str):
    levels = tuple(teacher_shapes) if levels == "all" else \
        tuple(l.strip() for l in levels.split(",") if l.strip())
  levels = tuple(levels)
  for level in levels:
    for who, shapes in (("joint teacher", teacher_shapes), ("student", student_shapes)):
      if level not in shapes:
        raise ValueError(f"distill.levels has {level!r}, which the {who} does not emit; "
                         f"it has: {', '.join(shapes)}")
    s, t = student_shapes[level], teacher_shapes[level]
    if len(s) != len(t):
      raise ValueError(f"level {level!r}: student shape {s} and joint-teacher shape {t} "
                       f"cannot be matched (a map and a vector)")
  return levels


@METHODS.register("mlfd")
class MLFD(Method):
  """Multi-level feature distillation (w_feat > 0 over `levels`)."""

  name = "mlfd"
  source = Source.JOINT

  def __init__(self, cfg, *, student_shapes: dict, teacher_shapes: dict, total_steps: int):
    super().__init__(cfg, student_shapes=student_shapes, teacher_shapes=teacher_shapes,
                     total_steps=total_steps)
    self.w_kd, self.w_feat, self.w_ce = cfg.w_kd, cfg.w_feat, cfg.w_ce
    self.temperature, self.label_smoothing = cfg.temperature, cfg.label_smoothing
    self.levels = resolve_levels(self.distilled_levels(cfg.levels, teacher_shapes),
                                 student_shapes, teacher_shapes)
    self.adapted = tuple(l for l in self.levels
                         if student_shapes[l][-1] != teacher_shapes[l][-1])

  def distilled_levels(self, levels, teacher_shapes):
    """The levels this method distils: `distill.levels` (subclasses fix their own)."""
    del teacher_shapes
    return levels

  def reads(self):
    return Reads(logits=True, levels=self.levels)

  def init(self, key):
    keys = jax.random.split(key, max(len(self.adapted), 1))
    return {"adaptors": {l: linear_init(k, self.student_shapes[l][-1], self.teacher_shapes[l][-1])
                         for l, k in zip(self.adapted, keys)}}

  def loss(self, params, *, student, teacher, labels, step=None):
    del step
    z_s, f_s = student
    z_t, f_t = teacher
    terms = {"kd": losses.kd_kl(z_s, z_t, self.temperature),
             "ce": losses.cross_entropy(z_s, labels, self.label_smoothing)}
    feat_total = 0.0
    for level in self.levels:
      s, t = f_s[level], f_t[level]
      if level in self.adapted:
        s = linear_apply(params["adaptors"][level], s)
      if t.ndim == 4:
        t = resize_map(t, s.shape[1:3])
      terms[f"feat/{level}"] = losses.mse(s, t)
      feat_total = feat_total + terms[f"feat/{level}"]
    terms["feat"] = feat_total
    total = self.w_kd * terms["kd"] + self.w_feat * feat_total + self.w_ce * terms["ce"]
    return total, terms


@METHODS.register("mlfd_last")
class MLFDLast(MLFD):
  """MLFD at the joint teacher's deepest map level only (stage4): the reference code's level."""

  name = "mlfd_last"

  def distilled_levels(self, levels, teacher_shapes):
    del levels
    return [l for l, s in teacher_shapes.items() if len(s) == 3][-1:]
