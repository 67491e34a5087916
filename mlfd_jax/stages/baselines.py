"""The `baseline_joint` stage: one backbone trained on all datasets at once, one head per dataset.

The backbone has the reference student's architecture (`joint.shape_like`, default the first
dataset's student) and trains with the students' schedule (`student_train`), on mixed batches
from all datasets, each sample's cross-entropy on its own dataset's head. The heads are one
linear layer whose outputs are sliced per dataset (the same function as separate heads).
This is the paper's "trained jointly" baseline; results go to `baseline_joint`.
"""

from __future__ import annotations

import jax.numpy as jnp

from mlfd_jax import train
from mlfd_jax.data import augment
from mlfd_jax.distill import losses
from mlfd_jax.stages import common, specs

STAGE = specs.BASELINE


def baseline_loss(model: specs.Baseline, label_smoothing: float):
  def loss(params, model_state, frozen, batch, key):
    del frozen
    logits, _, new_state = model.fn.apply({"params": params, "model_state": model_state},
                                          augment.fit(batch["image"], model.image_size),
                                          train=True, key=key)
    ids = batch.get("dataset", jnp.zeros_like(batch["label"]))
    ce, top1 = losses.multihead_ce(model.heads(logits), batch["label"], ids, label_smoothing)
    return ce, (new_state, {"ce": ce, "top1": top1})

  return loss


def baseline_task(ctx) -> train.Task:
  """The joint baseline's training task."""
  spec = specs.baseline(ctx)
  return spec.task(baseline_loss(spec.model, float(ctx.config.student_train.label_smoothing)))


def run(ctx) -> None:
  spec = specs.baseline(ctx)
  common.train_and_report(ctx, spec, baseline_loss(
      spec.model, float(ctx.config.student_train.label_smoothing)))
