"""Equal-weight multi-teacher logit KD, the AMTML-KD paper's main comparator.

  L = w_kd * T^2 * KL(mean_k softmax(z_k/T) || softmax(z_S/T)) + w_ce * CE(z_S, y)

z_k are each stage-1 teacher's logits on the student's classes (its own head, or a linear probe
when it was trained on another dataset).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mlfd_jax.distill import losses
from mlfd_jax.distill.base import METHODS, Method, Reads, Source


@METHODS.register("avg_kd")
class AvgKD(Method):
  name = "avg_kd"
  source = Source.TEACHERS
  needs_teacher_logits = True

  def __init__(self, cfg, *, student_shapes, teacher_shapes, total_steps: int):
    super().__init__(cfg, student_shapes=student_shapes, teacher_shapes=teacher_shapes,
                     total_steps=total_steps)
    self.w_kd, self.w_ce = cfg.w_kd, cfg.w_ce
    self.temperature, self.label_smoothing = cfg.temperature, cfg.label_smoothing

  def reads(self):
    return Reads(logits=True, levels=())

  def init(self, key):
    del key
    return {}

  def loss(self, params, *, student, teacher, labels, step=None):
    del params, step
    z_s = student[0]
    probs = [jax.nn.softmax(z.astype(jnp.float32) / self.temperature) for z, _ in teacher]
    target = sum(probs) / len(probs)
    terms = {"kd": losses.kd_kl_to_probs(z_s, target, self.temperature),
             "ce": losses.cross_entropy(z_s, labels, self.label_smoothing)}
    return self.w_kd * terms["kd"] + self.w_ce * terms["ce"], terms
