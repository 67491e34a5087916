"""The `baseline_joint` stage: one backbone trained on all datasets at once, one head per dataset.

The backbone has the reference student's architecture (`joint.shape_like`, default the first
dataset's student) and trains with the students' schedule (`student_train`), on mixed batches
from all datasets, each sample's cross-entropy on its own dataset's head. The heads are one
linear layer whose outputs are sliced per dataset (the same function as separate heads).
This is the paper's "trained jointly" baseline; results go to `baseline_joint`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mlfd_jax import data, train
from mlfd_jax.data import augment
from mlfd_jax.stages import STAGES, common, joint as joint_stage

STAGE = "baseline_joint"
NAME = "joint"


def baseline_task(config, names, datasets) -> train.Task:
  ref = config.joint.get("shape_like", "") or names[0]
  if ref not in names:
    raise ValueError(f"joint.shape_like={ref!r} is not a configured dataset; valid: "
                     f"{', '.join(names)}")
  block = joint_stage.student_block(config, ref)
  size = datasets[names.index(ref)].image_size
  counts = [d.num_classes for d in datasets]
  offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
  model = common.model_fn(block, num_classes=sum(counts), image_size=size,
                          train_cfg=config.student_train)
  smoothing = float(config.student_train.label_smoothing)

  def heads(logits):
    return [logits[:, offsets[k]:offsets[k + 1]] for k in range(len(counts))]

  def loss(params, model_state, frozen, batch, key):
    del frozen
    logits, _, new_state = model.apply({"params": params, "model_state": model_state},
                                       augment.fit(batch["image"], size), train=True, key=key)
    ids = batch.get("dataset", jnp.zeros_like(batch["label"]))
    ce, top1 = joint_stage.multihead_ce(heads(logits), batch["label"], ids, smoothing)
    return ce, (new_state, {"ce": ce, "top1": top1})

  def predict(params, model_state, frozen, images, head):
    del frozen
    logits = model.apply({"params": params, "model_state": model_state},
                         augment.fit(images, size), train=False)[0]
    return heads(logits)[head]

  meta = {"model": block, "num_classes": counts, "image_size": size}
  return train.Task(name=STAGE, init=model.init, loss=loss, predict=predict,
                    pad=min(int(d.pad) for d in datasets), flip=all(d.flip for d in datasets),
                    meta=meta)


@STAGES.register(STAGE)
def run(config, workdir: str, *, config_path: str = "") -> None:
  mesh = common.mesh(config)
  names = common.dataset_names(config)
  datasets = [common.build_dataset(config, n) for n in names]
  common.train_and_report(
      lambda: baseline_task(config, names, datasets), data.mix(datasets),
      [train.EvalSet(n, d, head=i) for i, (n, d) in enumerate(zip(names, datasets))],
      config.student_train, stage=STAGE, name=NAME, workdir=workdir, config=config,
      config_path=config_path, mesh=mesh, seed=config.seed, model=STAGE,
      num_classes={n: d.num_classes for n, d in zip(names, datasets)})
