"""Stage 3: one student per dataset, trained from scratch by distillation.

The student (default: its dataset's teacher architecture; `config.students.<dataset>` overrides)
and the frozen models it learns from run in the same jitted step on the same augmented batch.
What it learns from is the method's `source` (`config.distill.method`, distill/base.py): the
joint teacher (`mlfd`, `mlfd_last`, `kd`) or the stage-1 teachers themselves (`amtml`, `feed`,
`avg_kd`), whose logits on the student's classes come from linear probes (stages/probes.py).
Only the student and the method's adaptors train; the exported student is `params['student']`.

Each run (`distill.name`, default the method) has its own directory, `students/<dataset>` for
`mlfd` and `students_<run>/<dataset>` otherwise, and results key (`student`, `student_<run>`),
so all methods share one workdir's teachers and joint teacher.
"""

from __future__ import annotations

import jax

from mlfd_jax import distill, modelfn, train
from mlfd_jax.data import augment
from mlfd_jax.distill import base as distill_base
from mlfd_jax.stages import STAGES, common, joint as joint_stage, probes, teacher_store

STAGE = "students"


class FrozenModels:
  """The finished teachers and joint teachers a stage stands on, each restored once, lazily."""

  def __init__(self, config, workdir, names, datasets, mesh, config_path):
    self.config, self.workdir, self.names, self.datasets = config, workdir, names, datasets
    self.mesh, self.config_path = mesh, config_path
    self._teachers = None
    self._models = None
    self._probes: dict[int, list] = {}
    self._digests: dict[int, str] = {}
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

  def teacher_models(self):
    """Each stage-1 teacher as (ModelFn, input size, level shapes), built once."""
    if self._models is None:
      self._models = []
      for name, ds in zip(self.names, self.datasets):
        fn = common.model_fn(common.model_block(self.config, "teachers", name),
                             num_classes=ds.num_classes, image_size=ds.image_size,
                             train_cfg=self.config.student_train)
        self._models.append((fn, ds.image_size, modelfn.level_shapes(fn, ds.image_size)))
    return self._models

  def probes_for(self, index: int):
    """Per teacher: None where it shares dataset `index`'s label space, else its linear probe
    (loaded or fitted once per run)."""
    if index in self._probes:
      return self._probes[index]
    c, target = self.config, self.names[index]
    dc = c.distill
    out = []
    for k, ((fn, size, _), name) in enumerate(zip(self.teacher_models(), self.names)):
      if probes.same_data(c, target, name):
        out.append(None)
        continue
      steps = int(dc.get("probe_steps", 300))
      if steps <= 0:
        raise ValueError(f"distill.method={dc.method!r} needs the logits of the teacher of "
                         f"{name!r} on {target!r}'s classes, but distill.probe_steps={steps} "
                         f"turns the linear probes off; set it > 0")
      if k not in self._digests:
        self._digests[k] = probes.variables_digest(self.teachers()[k])
      out.append(probes.load_or_fit(
          self.workdir, target, name, fn, self.teachers()[k], size, self.datasets[index],
          self.mesh, examples=int(dc.get("probe_examples", 10000)), steps=steps,
          teacher_digest=self._digests[k]))
    self._probes[index] = out
    return out

  def sources_for(self, index: int):
    """(teacher_out(frozen, images), frozen, teacher level shapes) for the method's source."""
    if distill_base.method_source(self.config.distill) == "joint":
      joint, frozen, head = self.joint_for(index)

      def joint_out(frozen, images):
        jv = frozen["joint"]
        logits, feats, _ = joint.apply(jv["params"], jv["model_state"],
                                       {"teachers": frozen["teachers"]}, images, train=False)
        return jax.lax.stop_gradient((logits[head], feats))

      return joint_out, frozen, joint.level_shapes
    models = self.teacher_models()
    probes_ = self.probes_for(index) if distill_base.needs_teacher_logits(self.config.distill) \
        else [None] * len(models)  # unread logits stay on the teacher's own head
    frozen = {"teachers": self.teachers(), "probes": probes_}
    return teachers_source(models), frozen, [shapes for _, _, shapes in models]


def teachers_source(models):
  """teacher_out(frozen, images) for `source='teachers'`: each model's (logits, feats), the
  logits through its probe where `frozen['probes']` has one."""

  def teachers_out(frozen, images):
    outs = []
    for (fn, size, _), tv, probe in zip(models, frozen["teachers"], frozen["probes"]):
      logits, feats, _ = fn.apply(tv, augment.fit(images, size), train=False)
      if probe is not None:
        logits = distill_base.linear_apply(probe, feats["pooled"])
      outs.append((logits, feats))
    return jax.lax.stop_gradient(outs)

  return teachers_out


def student_model(config, name, ds):
  """(config block, ModelFn, level shapes) of dataset `name`'s student."""
  block = joint_stage.student_block(config, name)
  fn = common.model_fn(block, num_classes=ds.num_classes, image_size=ds.image_size,
                       train_cfg=config.student_train)
  return block, fn, modelfn.level_shapes(fn, ds.image_size)


def student_task(config, name, ds, teacher_out, frozen, teacher_shapes, *, stage: str = ""
                 ) -> train.Task:
  block, student, student_shapes = student_model(config, name, ds)
  method = distill.build_method(
      config.distill, student_shapes=student_shapes, teacher_shapes=teacher_shapes,
      total_steps=train.num_steps(config.student_train, ds.num_examples("train")))

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
                               teacher=teacher_out(frozen, batch["image"]),
                               labels=batch["label"], step=batch.get("step"))
    terms["top1"] = (z_s.argmax(-1) == batch["label"]).mean()
    return total, ({"student": new_state}, terms)

  def predict(params, model_state, frozen, images, head_):
    del frozen, head_
    return student.apply({"params": params["student"], "model_state": model_state["student"]},
                         images, train=False)[0]

  def gate(updates, step):
    return {**updates, "method": method.gate_updates(updates["method"], step)}

  meta = {"student": block, "num_classes": ds.num_classes, "image_size": ds.image_size,
          "method": config.distill.method}
  stage = stage or distill_base.stage_dirname(config.distill)
  return train.Task(name=f"{stage}/{name}", init=init,
                    loss=loss, predict=predict, frozen=frozen, pad=int(ds.pad),
                    flip=bool(ds.flip), meta=meta,
                    gate_updates=gate if hasattr(method, "gate_updates") else None)


def student_datasets(config, names) -> list[str]:
  """`config.student_datasets` (comma string; empty: every dataset) in dataset order."""
  wanted = [n.strip() for n in str(config.get("student_datasets", "") or "").split(",")
            if n.strip()]
  for n in wanted:
    if n not in names:
      raise ValueError(f"student_datasets has {n!r}, which is not a configured dataset; "
                       f"valid: {', '.join(names)}")
  return [n for n in names if not wanted or n in wanted]


def run_info(config) -> dict:
  """What a student's results entry says about how it was made (the report's column)."""
  dc = config.distill
  return {"method": dc.method, "levels": dc.get("levels", ""),
          "name": distill_base.run_name(dc)}


@STAGES.register(STAGE)
def run(config, workdir: str, *, config_path: str = "") -> None:
  mesh = common.mesh(config)
  names = common.dataset_names(config)
  datasets = [common.build_dataset(config, n) for n in names]
  frozen = FrozenModels(config, workdir, names, datasets, mesh, config_path)
  train_one(config, workdir, config_path, mesh, names, datasets, frozen)


def train_one(config, workdir, config_path, mesh, names, datasets, frozen) -> None:
  """Every student of the configured run, each trained (or resumed, or skipped) and recorded."""
  distill.check_config(config.distill)
  if getattr(distill.METHODS.get(config.distill.method), "sequential", False):
    return train_generations(config, workdir, config_path, mesh, names, datasets, frozen)
  stage, wanted = distill_base.stage_dirname(config.distill), student_datasets(config, names)
  for i, (name, ds) in enumerate(zip(names, datasets)):
    if name not in wanted:
      continue
    common.train_and_report(
        lambda: student_task(config, name, ds, *frozen.sources_for(i)), ds,
        [train.EvalSet(name, ds)], config.student_train, stage=stage, name=name,
        workdir=workdir, config=config, config_path=config_path, mesh=mesh, seed=config.seed + i,
        model=distill_base.results_key(config.distill), num_classes={name: ds.num_classes},
        extra=run_info(config))


def train_generations(config, workdir, config_path, mesh, names, datasets, frozen) -> None:
  """Sequential distillation (`feed_seq`): generation 0 learns from the stage-1 teachers, each
  later one from the previous generation's student alone, in `<stage>/gen<g>/<dataset>`. The
  last generation is the run's result; earlier ones are recorded as `<key>_gen<g>`."""
  generations = int(dict(config.distill.get("feed", {})).get("generations", 2))
  if generations < 1:
    raise ValueError(f"distill.feed.generations={generations} must be >= 1")
  base, key = distill_base.stage_dirname(config.distill), distill_base.results_key(config.distill)
  wanted = student_datasets(config, names)
  for i, (name, ds) in enumerate(zip(names, datasets)):
    if name not in wanted:
      continue
    _, fn, shapes = student_model(config, name, ds)
    sources = lambda: frozen.sources_for(i)  # noqa: E731  generation 0: the teachers
    for g in range(generations):
      stage, last = f"{base}/gen{g}", g == generations - 1
      info = {**run_info(config), "generation": g}
      if not last:
        info["name"] = f"{info['name']}_gen{g}"
      common.train_and_report(
          lambda sources=sources, stage=stage: student_task(config, name, ds, *sources(),
                                                            stage=stage),
          ds, [train.EvalSet(name, ds)], config.student_train, stage=stage, name=name,
          workdir=workdir, config=config, config_path=config_path, mesh=mesh,
          seed=config.seed + i + 1000 * g, model=key if last else f"{key}_gen{g}",
          num_classes={name: ds.num_classes}, extra=info)

      def previous(sources=sources, stage=stage):
        task = student_task(config, name, ds, *sources(), stage=stage)
        v = teacher_store.restore_finished(
            task, common.stage_dir(workdir, stage, name), what=f"{stage} student of {name}",
            stage=STAGE, workdir=workdir, config_path=config_path, train_cfg=config.student_train,
            num_train_examples=ds.num_examples("train"), mesh=mesh)
        student_vars = {"params": v["params"]["student"], "model_state": v["model_state"]["student"]}
        return (teachers_source([(fn, ds.image_size, shapes)]),
                {"teachers": [student_vars], "probes": [None]}, [shapes])

      sources = previous
