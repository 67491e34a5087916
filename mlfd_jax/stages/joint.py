"""Stage 2: the joint teacher, frozen stage-1 teachers fused by trainable layers.

Mode `all` (the paper, default): one fusion network with one head per dataset, trained on mixed
batches from all datasets, each sample's loss on its own dataset's head -> `WORKDIR/joint/joint`.
Mode `per_dataset` (the reference code): one fusion network per target dataset, trained on that
dataset only -> `WORKDIR/joint/<dataset>`. Either way every fusion network sees every teacher
(joint_teacher.py); the teachers are frozen inputs unless `joint.finetune_teachers`.
"""

from __future__ import annotations

import jax.numpy as jnp

from mlfd_jax import train
from mlfd_jax.distill import losses
from mlfd_jax.joint_teacher import JointTeacher
from mlfd_jax.stages import common, precomputed, specs

STAGE = "joint"


def multihead_loss(joint: JointTeacher, label_smoothing: float, precomputed_maps: bool = False):
  """Each sample's cross-entropy on its own dataset's head, averaged over the batch; with
  `precomputed_maps` the teachers' maps come from `frozen['maps']` by example index."""

  def loss(params, model_state, frozen, batch, key):
    maps = precomputed.gather(frozen["maps"], batch["index"]) if precomputed_maps else None
    logits, _, new_state = joint.apply(params, model_state, frozen, batch["image"], train=True,
                                       key=key, maps=maps)
    ids = batch.get("dataset", jnp.zeros_like(batch["label"]))
    ce, top1 = losses.multihead_ce(logits, batch["label"], ids, label_smoothing)
    return ce, (new_state, {"ce": ce, "top1": top1})

  return loss


def joint_task(ctx, target: str, heads: list[int]) -> train.Task:
  """The training task of joint teacher `target` (its teachers restored, or as `put`)."""
  spec = specs.joint(ctx, target, heads)
  return spec.task(_loss(ctx, spec))


def _loss(ctx, spec):
  return multihead_loss(spec.model, float(ctx.config.joint_train.label_smoothing),
                        precomputed_maps=bool(ctx.config.joint.precompute_teachers))


def run(ctx) -> None:
  for spec in specs.joints(ctx):
    common.train_and_report(ctx, spec, _loss(ctx, spec))
