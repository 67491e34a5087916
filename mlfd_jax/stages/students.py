"""Stage 3: one student per dataset, trained from scratch by distillation from the joint teacher.

The student (default: its dataset's teacher architecture; `config.students.<dataset>` overrides)
and the frozen joint teacher run in the same jitted step on the same augmented batch; the method
(`config.distill.method`) turns both outputs into the loss. Only the student and the method's
adaptors train; the exported student is `params['student']` alone.
"""

from __future__ import annotations

import jax

from mlfd_jax import distill, modelfn, train
from mlfd_jax.stages import STAGES, common, joint as joint_stage, teacher_store

STAGE = "students"


class FrozenModels:
  """The finished teachers and joint teachers a stage stands on, each restored once, lazily."""

  def __init__(self, config, workdir, names, datasets, mesh, config_path):
    self.config, self.workdir, self.names, self.datasets = config, workdir, names, datasets
    self.mesh, self.config_path = mesh, config_path
    self._teachers = None
    self._joint: dict[str, tuple] = {}

  def teachers(self):
    if self._teachers is None:
      self._teachers = joint_stage.load_teachers(self.config, self.workdir, self.names,
                                                 self.datasets, self.mesh, self.config_path)
    return self._teachers

  def joint_for(self, index: int):
    """(JointTeacher, frozen variables, head) serving dataset `index`."""
    c = self.config
    target, heads = [(t, h) for t, h in joint_stage.targets(c, self.names) if index in h][0]
    if target not in self._joint:
      task = joint_stage.build_task(c, self.workdir, self.names, self.datasets, self.mesh,
                                    self.config_path, heads, self.teachers())
      members = [self.datasets[i] for i in heads]
      variables = teacher_store.restore_finished(
          task, common.stage_dir(self.workdir, joint_stage.STAGE, target), what="joint teacher",
          stage=joint_stage.STAGE, workdir=self.workdir, config_path=self.config_path,
          train_cfg=c.joint_train, mesh=self.mesh,
          num_train_examples=sum(d.num_examples("train") for d in members))
      joint = joint_stage.build_joint(c, self.names, self.datasets, heads, c.joint_train)
      self._joint[target] = (joint, {"joint": variables, "teachers": self.teachers()}, heads)
    joint, frozen, heads = self._joint[target]
    return joint, frozen, heads.index(index)


def student_task(config, name, ds, joint, frozen, head) -> train.Task:
  block = joint_stage.student_block(config, name)
  student = common.model_fn(block, num_classes=ds.num_classes, image_size=ds.image_size,
                            train_cfg=config.student_train)
  student_shapes = modelfn.level_shapes(student, ds.image_size)
  method = distill.build_method(config.distill, student_shapes=student_shapes,
                                teacher_shapes=joint.level_shapes)

  def teacher_out(frozen, images):
    jv = frozen["joint"]
    logits, feats, _ = joint.apply(jv["params"], jv["model_state"],
                                   {"teachers": frozen["teachers"]}, images, train=False)
    return jax.lax.stop_gradient((logits[head], feats))

  def init(key):
    k1, k2 = jax.random.split(key)
    v = student.init(k1)
    return {"params": {"student": v["params"], "method": method.init(k2)},
            "model_state": {"student": v["model_state"]}}

  def loss(params, model_state, frozen, batch, key):
    z_s, f_s, new_state = student.apply(
        {"params": params["student"], "model_state": model_state["student"]}, batch["image"],
        train=True, key=key)
    total, terms = method.loss(params["method"], student=(z_s, f_s),
                               teacher=teacher_out(frozen, batch["image"]), labels=batch["label"])
    terms["top1"] = (z_s.argmax(-1) == batch["label"]).mean()
    return total, ({"student": new_state}, terms)

  def predict(params, model_state, frozen, images, head_):
    del frozen, head_
    return student.apply({"params": params["student"], "model_state": model_state["student"]},
                         images, train=False)[0]

  meta = {"student": block, "num_classes": ds.num_classes, "image_size": ds.image_size,
          "method": config.distill.method}
  return train.Task(name=f"student/{name}", init=init, loss=loss, predict=predict,
                    frozen=frozen, pad=int(ds.pad), flip=bool(ds.flip), meta=meta)


@STAGES.register(STAGE)
def run(config, workdir: str, *, config_path: str = "") -> None:
  mesh = common.mesh(config)
  names = common.dataset_names(config)
  datasets = [common.build_dataset(config, n) for n in names]
  frozen = FrozenModels(config, workdir, names, datasets, mesh, config_path)
  for i, (name, ds) in enumerate(zip(names, datasets)):
    common.train_and_report(
        lambda: student_task(config, name, ds, *frozen.joint_for(i)), ds,
        [train.EvalSet(name, ds)], config.student_train, stage=STAGE, name=name,
        workdir=workdir, config=config, config_path=config_path, mesh=mesh, seed=config.seed + i,
        model="student", num_classes={name: ds.num_classes})
