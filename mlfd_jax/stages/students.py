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


def joint_for(config, workdir, names, datasets, mesh, config_path, index: int):
  """(JointTeacher, its frozen variables, the head of dataset `index`, its level shapes)."""
  target, heads = [(t, h) for t, h in joint_stage.targets(config, names) if index in h][0]
  teacher_vars = joint_stage.load_teachers(config, workdir, names, datasets, mesh, config_path)
  task = joint_stage.build_task(config, workdir, names, datasets, mesh, config_path, heads,
                                teacher_vars)
  members = [datasets[i] for i in heads]
  variables = teacher_store.restore_finished(
      task, common.stage_dir(workdir, joint_stage.STAGE, target), what="joint teacher",
      stage=joint_stage.STAGE, workdir=workdir, config_path=config_path,
      train_cfg=config.joint_train,
      num_train_examples=sum(d.num_examples("train") for d in members), mesh=mesh)
  joint = joint_stage.build_joint(config, names, datasets, heads, config.joint_train)
  frozen = {"joint": variables, "teachers": teacher_vars}
  return joint, frozen, heads.index(index), joint.fusion_level


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
  for i, (name, ds) in enumerate(zip(names, datasets)):
    joint, frozen, head, _ = joint_for(config, workdir, names, datasets, mesh, config_path, i)
    task = student_task(config, name, ds, joint, frozen, head)
    eval_sets = [train.EvalSet(name, ds)]
    ckpts = train.fit(task, ds, eval_sets, config.student_train,
                      common.stage_dir(workdir, STAGE, name), mesh=mesh, seed=config.seed + i,
                      writer=common.writer(workdir, STAGE, name), config_dict=config.to_dict())
    common.record_report(task, ckpts, eval_sets, config.student_train, mesh=mesh,
                         workdir=workdir, config_path=config_path, config=config,
                         model="student", num_classes={name: ds.num_classes})
    ckpts.close()
