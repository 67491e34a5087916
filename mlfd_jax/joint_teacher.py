"""MLFD's joint teacher as functions of (fusion variables, teacher variables).

The stage-1 teachers are frozen inputs: each runs in inference mode on the batch resized to its
own input size, and its map at the fusion level goes into a `FusionHead` (models/fusion.py),
which emits one logit head per dataset and maps shaped like the reference student's levels.
Unless `finetune`, the teachers' maps are under `stop_gradient` and only the fusion part trains;
with `finetune` the teachers' params train too (their BatchNorm stays in inference mode).
"""

from __future__ import annotations

import dataclasses

import jax

from mlfd_jax import modelfn
from mlfd_jax.data import augment


@dataclasses.dataclass
class JointTeacher:
  """Frozen teachers + a FusionHead."""

  teachers: list[modelfn.ModelFn]
  teacher_sizes: list[int]
  fusion: modelfn.ModelFn
  fusion_level: str
  level_shapes: dict[str, tuple[int, ...]]  # what it emits, per example: the reference student's
  finetune: bool = False

  def teacher_maps(self, teacher_vars, images):
    maps = []
    for fn, size, tv in zip(self.teachers, self.teacher_sizes, teacher_vars):
      x = augment.fit(images, size)
      feats = fn.apply(tv, x, train=False)[1]
      maps.append(feats[self.fusion_level])
    return maps if self.finetune else [jax.lax.stop_gradient(m) for m in maps]

  def split_teachers(self, params, frozen):
    """The teachers' variables: trained params when fine-tuning, else the frozen input."""
    if not self.finetune:
      return frozen["teachers"]
    return [{"params": p, "model_state": f["model_state"]}
            for p, f in zip(params["teachers"], frozen["teachers"])]

  def init(self, key):
    v = self.fusion.init(key)
    return {"params": {"fusion": v["params"]}, "model_state": {"fusion": v["model_state"]}}

  def apply(self, params, model_state, frozen, images, *, train: bool, key=None, maps=None):
    """Returns (logits per head, fused levels, new model_state). `maps`: the teachers'
    fusion-level maps of these images, precomputed (joint.precompute_teachers); None runs the
    teachers."""
    if maps is None:
      maps = self.teacher_maps(self.split_teachers(params, frozen), images)
    logits, feats, new_state = self.fusion.apply(
        {"params": params["fusion"], "model_state": model_state["fusion"]}, maps, train=train,
        key=key)
    return logits, feats, {"fusion": new_state}
