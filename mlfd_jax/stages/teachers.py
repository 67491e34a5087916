"""Stage 1: one teacher per dataset, trained from scratch with cross-entropy.

Each teacher has its own architecture (`config.teachers.<dataset>`) and lands in
`WORKDIR/teachers/<dataset>/`; its accuracies go to `results.json` as `teacher`.
`config.teacher_datasets` trains some of them only (a teacher's seed and batches depend on its
dataset alone, so teachers trained in separate processes are the ones one process would train).
"""

from __future__ import annotations

from mlfd_jax import modelfn, train
from mlfd_jax.distill import losses
from mlfd_jax.metrics import top1_accuracy
from mlfd_jax.stages import common, specs

STAGE = "teachers"


def classifier_loss(model: modelfn.ModelFn, label_smoothing: float):
  """Plain supervised training of one model on one dataset."""

  def loss(params, model_state, frozen, batch, key):
    del frozen
    logits, _, new_state = model.apply({"params": params, "model_state": model_state},
                                       batch["image"], train=True, key=key)
    ce = losses.cross_entropy(logits, batch["label"], label_smoothing)
    return ce, (new_state, {"ce": ce, "top1": top1_accuracy(logits, batch["label"])})

  return loss


def teacher_task(ctx, name: str) -> train.Task:
  """The training task of dataset `name`'s teacher."""
  spec = specs.teacher(ctx, name)
  return spec.task(classifier_loss(spec.model, float(ctx.config.teacher_train.label_smoothing)))


def run(ctx) -> None:
  smoothing = float(ctx.config.teacher_train.label_smoothing)
  for spec in [specs.teacher(ctx, name) for name in specs.teacher_datasets(ctx)]:
    common.train_and_report(ctx, spec, classifier_loss(spec.model, smoothing))
