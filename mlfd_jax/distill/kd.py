"""Logit-only distillation from the joint teacher (Hinton et al.): MLFD with no feature term.

  L = w_kd * T^2 * KL(softmax(z_T/T) || softmax(z_S/T)) + w_ce * CE(z_S, y)
"""

from __future__ import annotations

from mlfd_jax.distill.base import METHODS
from mlfd_jax.distill.mlfd import MLFD


@METHODS.register("kd")
class KD(MLFD):
  name = "kd"

  def distilled_levels(self, levels, teacher_shapes):
    del levels, teacher_shapes
    return ()
