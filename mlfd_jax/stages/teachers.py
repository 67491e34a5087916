"""Stage 1: one teacher per dataset, trained from scratch with cross-entropy.

Each teacher has its own architecture (`config.teachers.<dataset>`) and lands in
`WORKDIR/teachers/<dataset>/`; its accuracies go to `results.json` as `teacher`.
"""

from __future__ import annotations

from mlfd_jax import train
from mlfd_jax.distill import losses
from mlfd_jax.metrics import top1_accuracy
from mlfd_jax.stages import STAGES, common

STAGE = "teachers"


def classifier_task(name: str, model, *, label_smoothing: float, dataset, meta: dict
                    ) -> train.Task:
  """Plain supervised training of one model on one dataset."""

  def loss(params, model_state, frozen, batch, key):
    del frozen
    logits, _, new_state = model.apply({"params": params, "model_state": model_state},
                                       batch["image"], train=True, key=key)
    ce = losses.cross_entropy(logits, batch["label"], label_smoothing)
    return ce, (new_state, {"ce": ce, "top1": top1_accuracy(logits, batch["label"])})

  def predict(params, model_state, frozen, images, head):
    del frozen, head
    return model.apply({"params": params, "model_state": model_state}, images, train=False)[0]

  return train.Task(name=name, init=model.init, loss=loss, predict=predict,
                    pad=int(dataset.pad), flip=bool(dataset.flip), meta=meta)


def teacher_task(config, name: str, dataset) -> train.Task:
  block = common.model_block(config, "teachers", name)
  model = common.model_fn(block, num_classes=dataset.num_classes,
                          image_size=dataset.image_size, train_cfg=config.teacher_train)
  meta = {"model": block, "num_classes": dataset.num_classes, "image_size": dataset.image_size}
  return classifier_task(f"teacher/{name}", model, dataset=dataset, meta=meta,
                         label_smoothing=float(config.teacher_train.label_smoothing))


@STAGES.register(STAGE)
def run(config, workdir: str, *, config_path: str = "") -> None:
  mesh = common.mesh(config)
  for i, name in enumerate(common.dataset_names(config)):
    ds = common.build_dataset(config, name)
    common.train_and_report(
        lambda: teacher_task(config, name, ds), ds, [train.EvalSet(name, ds)],
        config.teacher_train, stage=STAGE, name=name, workdir=workdir, config=config,
        config_path=config_path, mesh=mesh, seed=config.seed + i, model="teacher",
        num_classes={name: ds.num_classes})
