"""Every model the pipeline trains, as a `ModelSpec` built from the config alone.

A spec says where a model's checkpoints live, how to make its variables (`init`) and predict
with them, what it must have been made with (`meta`), what it trains on, how it is evaluated and
reported, and which frozen models it stands on (restored only when first needed). The stage that
trains a model adds its loss; a later stage restores it from its spec (frozen.py); the `eval`
stage evaluates it from its spec. Building a spec builds no checkpoint and trains nothing, so
building every spec of a command checks its whole config before any training.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any, Callable

import jax
import numpy as np

from mlfd_jax import data, distill, modelfn, optim, parallel, train
from mlfd_jax.data import augment
from mlfd_jax.distill import base as distill_base
from mlfd_jax.evaluation import EvalSet, FrozenInputs
from mlfd_jax.functional import linear_apply
from mlfd_jax.joint_teacher import JointTeacher
from mlfd_jax.models import MAP_LEVELS, FeatureSpace, feature_space
from mlfd_jax.models.fusion import FusionHead
from mlfd_jax.stages import precomputed, probes

if TYPE_CHECKING:
  from mlfd_jax.stages.context import RunContext

JOINT_MODES = ("all", "per_dataset")
JOINT_ALL = "joint"  # the directory name of the mode-`all` joint teacher
BASELINE = "baseline_joint"


@dataclasses.dataclass
class ModelSpec:
  """One trained model of the pipeline (see the module docstring)."""

  what: str                      # names it in messages: "teacher of digits_a"
  label: str                     # names it in training logs: "teacher/digits_a"
  stage: str                     # the `config.stage` that trains it
  dirname: str                   # its checkpoints: WORKDIR/<dirname>/<name>
  name: str
  model: Any                     # what its loss applies: ModelFn, JointTeacher or Student
  init: Callable[[jax.Array], dict]
  predict: Callable[..., jax.Array]
  meta: dict
  train_cfg: Any
  train_key: str                 # where train_cfg sits in the config, for messages
  num_train_examples: int
  train_data: Callable[[], Any]  # its training Dataset (a mixture for multi-dataset models)
  eval_sets: list[EvalSet]
  results_key: str               # its column in results.json
  seed: int
  pad: int
  flip: bool
  frozen: Callable[[], Any] = lambda: None  # the frozen variables it stands on
  frozen_inputs: FrozenInputs | None = None  # where `predict`'s frozen part ends (evaluation)
  extra: dict = dataclasses.field(default_factory=dict)  # stored in its results entries

  @property
  def directory(self) -> str:
    return f"{self.dirname}/{self.name}"

  @property
  def total_steps(self) -> int:
    return train.num_steps(self.train_cfg, self.num_train_examples, self.train_key)

  def check_training(self, mesh) -> None:
    """Fails now, naming the key, on a step count, batch size, optimizer or schedule that
    `train.fit` would refuse only when this model's turn to train comes."""
    parallel.check_batch_size(int(self.train_cfg.batch_size), mesh,
                              f"{self.train_key}.batch_size")
    steps = self.total_steps
    try:
      optim.make_optimizer(self.train_cfg.optimizer, self.train_cfg.schedule, steps)
    except ValueError as e:
      raise ValueError(f"{self.train_key}: {e}") from None

  @property
  def num_classes(self) -> dict[str, int]:
    return {es.name: es.dataset.num_classes for es in self.eval_sets}

  def task(self, loss, gate_updates=train.keep_updates) -> train.Task:
    """The training task: this model with the stage's loss (frozen models restored now)."""
    return train.Task(name=self.label, init=self.init, loss=loss, predict=self.predict,
                      frozen=self.frozen(), pad=self.pad, flip=self.flip, meta=self.meta,
                      gate_updates=gate_updates, frozen_inputs=self.frozen_inputs)


# Model configs ------------------------------------------------------------------------------
def model_config(ctx: RunContext, group: str, name: str) -> dict:
  """The model block of dataset `name` in `config.<group>` (`teachers` or `students`)."""
  blocks = ctx.config[group]
  if name not in blocks:
    raise ValueError(f"config.{group} has no model for dataset {name!r}; "
                     f"it has: {', '.join(blocks.keys()) or 'none'}")
  return dict(blocks[name].to_dict())


def student_config(ctx: RunContext, name: str) -> dict:
  """A dataset's student model: `config.students.<name>`, else its teacher's architecture."""
  if name in ctx.config.students:
    return dict(ctx.config.students[name].to_dict())
  return model_config(ctx, "teachers", name)


def model_fn(ctx: RunContext, block: dict, dataset, train_cfg) -> modelfn.ModelFn:
  """Model `block` for `dataset`'s classes and image size, in `train_cfg`'s compute dtype (one
  ModelFn per distinct model in a command)."""
  dtype = train_cfg.get("dtype", "float32")
  key = ("model_fn", json.dumps(block, sort_keys=True), json.dumps(dataset.num_classes),
         dataset.image_size, dtype)
  return ctx.once(key, lambda: modelfn.from_config(
      block, num_classes=dataset.num_classes, image_size=dataset.image_size,
      dtype=modelfn.compute_dtype(dtype)))


def reference_student(ctx: RunContext) -> tuple[str, dict[str, tuple[int, ...]], FeatureSpace]:
  """The dataset whose student the joint teacher's levels imitate (`joint.shape_like`, default
  the first dataset), its level shapes and its feature space."""
  ref = ctx.config.joint.get("shape_like", "") or ctx.names[0]
  if ref not in ctx.names:
    raise ValueError(f"joint.shape_like={ref!r} is not a configured dataset; valid: "
                     f"{', '.join(ctx.names)}")
  ds, block = ctx.dataset(ref), student_config(ctx, ref)
  student = model_fn(ctx, block, ds, ctx.config.student_train)
  return ref, modelfn.level_shapes(student, ds.image_size), feature_space(block["name"])


def _classifier_predict(fn: modelfn.ModelFn):
  def predict(params, model_state, frozen, images, head):
    del frozen, head
    return fn.apply({"params": params, "model_state": model_state}, images, train=False)[0]
  return predict


# Stage 1: teachers ----------------------------------------------------------------------------
def teacher(ctx: RunContext, name: str) -> ModelSpec:
  """Dataset `name`'s teacher, trained from scratch on it (`WORKDIR/teachers/<name>`)."""
  ds, c = ctx.dataset(name), ctx.config
  block = model_config(ctx, "teachers", name)
  fn = model_fn(ctx, block, ds, c.teacher_train)
  return ModelSpec(
      what=f"teacher of {name}", label=f"teacher/{name}", stage="teachers", dirname="teachers",
      name=name, model=fn,
      init=fn.init, predict=_classifier_predict(fn),
      meta={"model": block, "num_classes": ds.num_classes, "image_size": ds.image_size},
      train_cfg=c.teacher_train, train_key="teacher_train",
      num_train_examples=ds.num_examples("train"),
      train_data=lambda: ds, eval_sets=[EvalSet(name, ds)], results_key="teacher",
      seed=c.seed + ctx.names.index(name), pad=int(ds.pad), flip=bool(ds.flip))


def teachers(ctx: RunContext) -> list[ModelSpec]:
  return [teacher(ctx, n) for n in ctx.names]


# Stage 2: joint teachers ----------------------------------------------------------------------
def joint_targets(ctx: RunContext) -> list[tuple[str, list[int]]]:
  """(directory name, head dataset indices) of each joint teacher `joint.mode` asks for:
  `all` (the paper) one with a head per dataset, `per_dataset` (the reference code) one per
  dataset trained on it alone."""
  mode = ctx.config.joint.mode
  if mode not in JOINT_MODES:
    raise ValueError(f"unknown joint.mode {mode!r}; valid: {', '.join(JOINT_MODES)}")
  if mode == "all":
    return [(JOINT_ALL, list(range(len(ctx.names))))]
  return [(name, [i]) for i, name in enumerate(ctx.names)]


def joint_model(ctx: RunContext, heads: list[int]) -> JointTeacher:
  """The joint teacher over every teacher, with heads for the datasets `heads` indexes (built
  once per command)."""
  return ctx.once(("joint_model", tuple(heads)), lambda: _build_joint_model(ctx, heads))


def _build_joint_model(ctx: RunContext, heads: list[int]) -> JointTeacher:
  jc, dtype_cfg = ctx.config.joint, ctx.config.joint_train
  level = jc.fusion_level
  if level not in MAP_LEVELS:
    raise ValueError(f"joint.fusion_level={level!r} is not a map level; valid: "
                     f"{', '.join(MAP_LEVELS)}")
  fns, sizes, widths, datasets = [], [], [], ctx.datasets()
  for name, ds in zip(ctx.names, datasets):
    fn = model_fn(ctx, model_config(ctx, "teachers", name), ds, dtype_cfg)
    shapes = modelfn.level_shapes(fn, ds.image_size)
    if level not in shapes:
      raise ValueError(f"teacher of {name} has no level {level!r}; it has: {', '.join(shapes)}")
    fns.append(fn)
    sizes.append(ds.image_size)
    widths.append(shapes[level][-1])
  _, targets, space = reference_student(ctx)
  dtype = modelfn.compute_dtype(dtype_cfg.get("dtype", "float32"))
  num_classes = [datasets[i].num_classes for i in heads]
  fusion = modelfn.ModelFn(lambda rngs: FusionHead(
      teacher_widths=widths, fusion_level=level, target_shapes=targets, target_space=space,
      num_classes=num_classes, width=int(jc.width), dropout=float(jc.dropout), rngs=rngs,
      dtype=dtype))
  emitted = (*MAP_LEVELS[MAP_LEVELS.index(level):], "pooled")
  return JointTeacher(fns, sizes, fusion, level, {k: targets[k] for k in emitted},
                      finetune=bool(jc.finetune_teachers))


def joint(ctx: RunContext, target: str, heads: list[int]) -> ModelSpec:
  """The joint teacher `target` (`WORKDIR/joint/<target>`), with heads for `heads`."""
  c, jc = ctx.config, ctx.config.joint
  model, datasets = joint_model(ctx, heads), ctx.datasets()
  members = [datasets[i] for i in heads]
  teacher_vars = lambda: ctx.frozen.teachers()  # noqa: E731
  train_data = lambda: data.mix(members) if len(members) > 1 else members[0]  # noqa: E731
  precompute = bool(jc.precompute_teachers)
  if precompute and model.finetune:
    raise ValueError("joint.precompute_teachers computes the frozen teachers' maps once, but "
                     "joint.finetune_teachers=True trains the teachers; set one of them False")

  def frozen():
    if not precompute:
      return {"teachers": teacher_vars()}
    maps = precomputed.table(
        lambda tv, images: model.teacher_maps(tv, images), teacher_vars(), train_data(),
        ctx.mesh, c.joint_train,
        what=f"the teachers' {jc.fusion_level} maps", key="joint.precompute_teachers")
    return {"teachers": teacher_vars(), "maps": maps}

  def init(key):
    v = model.init(key)
    if model.finetune:
      v["params"]["teachers"] = [tv["params"] for tv in teacher_vars()]
    return v

  def predict(params, model_state, frozen, images, head):
    return model.apply(params, model_state, frozen, images, train=False)[0][head]

  def predict_from_maps(params, model_state, frozen, maps, head):
    return model.apply(params, model_state, frozen, None, train=False, maps=maps)[0][head]

  # Frozen teachers give the same maps of an evaluation image at every validation: computed
  # once per split. Fine-tuned teachers change, so they run every time.
  frozen_inputs = None if model.finetune else FrozenInputs(
      compute=lambda frozen, images: model.teacher_maps(frozen["teachers"], images),
      predict=predict_from_maps)
  meta = {"teachers": [model_config(ctx, "teachers", n) for n in ctx.names],
          "heads": [ctx.names[i] for i in heads],
          "num_classes": [d.num_classes for d in members],
          "fusion": {k: jc[k] for k in ("fusion_level", "width", "shape_like", "mode")},
          "finetune_teachers": bool(jc.finetune_teachers),
          "reference_student": reference_student(ctx)[0]}
  return ModelSpec(
      what="joint teacher", label="joint", stage="joint", dirname="joint", name=target, model=model,
      init=init, predict=predict, meta=meta, train_cfg=c.joint_train,
      train_key="joint_train",
      num_train_examples=sum(d.num_examples("train") for d in members),
      train_data=train_data,
      eval_sets=[EvalSet(ctx.names[i], datasets[i], head=h) for h, i in enumerate(heads)],
      results_key="joint_teacher", seed=c.seed, pad=min(int(d.pad) for d in members),
      flip=all(d.flip for d in members), frozen=frozen, frozen_inputs=frozen_inputs)


def joints(ctx: RunContext) -> list[ModelSpec]:
  return [joint(ctx, target, heads) for target, heads in joint_targets(ctx)]


# Stage 3: students ----------------------------------------------------------------------------
@dataclasses.dataclass
class Student:
  """A student as its loss sees it: its network, its method, and what it learns from."""
  fn: modelfn.ModelFn
  method: distill.Method
  teacher_out: Callable[[Any, dict], Any]  # (frozen, batch) -> the method's `teacher`


@dataclasses.dataclass
class _Source:
  """What a student learns from: the method's `teacher` input, its level shapes, the frozen
  variables it reads, and what it is (named in logs)."""
  teacher_out: Callable[[Any, dict], Any]  # (frozen, batch) -> the method's `teacher`
  shapes: Any                    # the joint teacher's level shapes, or a list per teacher
  frozen: Callable[[], Any]
  what: str


def _selected_datasets(ctx: RunContext, key: str) -> list[str]:
  """`config.<key>` (comma string; empty: every dataset) in dataset order."""
  wanted = [n.strip() for n in str(ctx.config.get(key, "") or "").split(",") if n.strip()]
  for n in wanted:
    if n not in ctx.names:
      raise ValueError(f"{key} has {n!r}, which is not a configured dataset; "
                       f"valid: {', '.join(ctx.names)}")
  return [n for n in ctx.names if not wanted or n in wanted]


def student_datasets(ctx: RunContext) -> list[str]:
  """The datasets whose students `stage=students` trains (`config.student_datasets`)."""
  return _selected_datasets(ctx, "student_datasets")


def teacher_datasets(ctx: RunContext) -> list[str]:
  """The datasets whose teachers `stage=teachers` trains (`config.teacher_datasets`), so that a
  launcher can train a seed's teachers in several processes at once (launch/seed_lanes.sh)."""
  return _selected_datasets(ctx, "teacher_datasets")


def teachers_out(models: list[tuple[modelfn.ModelFn, int]]):
  """teacher_out(frozen, batch) for `Source.TEACHERS`: each model's (logits, feats), the
  logits through its probe where `frozen['probes']` has one."""

  def out(frozen, batch):
    images, outs = batch["image"], []
    for (fn, size), tv, probe in zip(models, frozen["teachers"], frozen["probes"]):
      logits, feats, _ = fn.apply(tv, augment.fit(images, size), train=False)
      if probe is not None:
        logits = linear_apply(probe, feats["pooled"])
      outs.append((logits, feats))
    return jax.lax.stop_gradient(outs)

  return out


def _joint_source(ctx: RunContext, index: int) -> _Source:
  target, heads = [(t, h) for t, h in joint_targets(ctx) if index in h][0]
  model, head = joint_model(ctx, heads), heads.index(index)

  def out(frozen, batch):
    jv = frozen["joint"]
    logits, feats, _ = model.apply(jv["params"], jv["model_state"],
                                   {"teachers": frozen["teachers"]}, batch["image"], train=False)
    return jax.lax.stop_gradient((logits[head], feats))

  def variables():
    return {"joint": ctx.frozen.restore(joint(ctx, target, heads)),
            "teachers": ctx.frozen.teachers()}

  return _Source(out, model.level_shapes, variables, what="the joint teacher's targets")


def _precomputed(ctx: RunContext, index: int, source: _Source, method: distill.Method
                 ) -> _Source:
  """`source` with its outputs computed once on the un-augmented training images of dataset
  `index` and read by example index (`distill.precompute_targets`; stages/precomputed.py).
  The table holds only what `method` reads (e.g. avg_kd: the teachers' logits, no maps)."""
  name = ctx.names[index]

  def table():
    return {"targets": precomputed.table(
        lambda variables, images: method.teacher_subset(
            source.teacher_out(variables, {"image": images})),
        source.frozen(), ctx.dataset(name), ctx.mesh, ctx.config.student_train,
        what=f"{source.what} for {name}", key="distill.precompute_targets")}

  return _Source(lambda frozen, batch: precomputed.gather(frozen["targets"], batch["index"]),
                 source.shapes, table, source.what)


def _teachers_source(ctx: RunContext, index: int, method_cls) -> _Source:
  dc, target = ctx.config.distill, ctx.names[index]
  models = [(model_fn(ctx, model_config(ctx, "teachers", n), ds, ctx.config.student_train),
             ds.image_size) for n, ds in zip(ctx.names, ctx.datasets())]
  shapes = [modelfn.level_shapes(fn, size) for fn, size in models]
  needs_probes = [method_cls.needs_teacher_logits and not probes.same_data(ctx.config, target, n)
                  for n in ctx.names]
  steps = int(dc.get("probe_steps", 300))
  if any(needs_probes) and steps <= 0:
    name = ctx.names[needs_probes.index(True)]
    raise ValueError(f"distill.method={dc.method!r} needs the logits of the teacher of "
                     f"{name!r} on {target!r}'s classes, but distill.probe_steps={steps} "
                     f"turns the linear probes off; set it > 0")

  def frozen():
    # Unread logits stay on each teacher's own head: no probes.
    probes = ctx.frozen.probes_for(index, models) if any(needs_probes) else \
        [None] * len(models)
    return {"teachers": ctx.frozen.teachers(), "probes": probes}

  return _Source(teachers_out(models), shapes, frozen, what="the teachers' outputs")


def _previous_generation(ctx: RunContext, previous: ModelSpec, generation: int) -> _Source:
  fn, size = previous.model.fn, ctx.dataset(previous.name).image_size

  def frozen():
    v = ctx.frozen.restore(previous)
    return {"teachers": [{"params": v["params"]["student"],
                          "model_state": v["model_state"]["student"]}], "probes": [None]}

  return _Source(teachers_out([(fn, size)]), [modelfn.level_shapes(fn, size)], frozen,
                 what=f"the generation-{generation - 1} student's outputs")


def student(ctx: RunContext, name: str, generation: int = 0) -> ModelSpec:
  """Dataset `name`'s student of the configured distillation run (`config.distill`).

  It lands in `students/<name>` for the default method, `students_<run>/<name>` otherwise, and
  `.../gen<g>/<name>` for methods with several generations, where generation 0 learns from the
  method's source and every later one from the previous generation's student alone.
  """
  c, dc = ctx.config, ctx.config.distill
  method_cls, generations = distill_base.method_class(dc), distill.generations(dc)
  index, ds = ctx.names.index(name), ctx.dataset(name)
  if generation > 0:
    source = _previous_generation(ctx, student(ctx, name, generation - 1), generation)
  elif method_cls.source is distill.Source.JOINT:
    source = _joint_source(ctx, index)
  else:
    source = _teachers_source(ctx, index, method_cls)
  block = student_config(ctx, name)
  fn = model_fn(ctx, block, ds, c.student_train)
  method = distill.build_method(
      dc, student_shapes=modelfn.level_shapes(fn, ds.image_size), teacher_shapes=source.shapes,
      total_steps=train.num_steps(c.student_train, ds.num_examples("train")))
  if dc.precompute_targets:
    source = _precomputed(ctx, index, source, method)

  def init(key):
    k1, k2 = jax.random.split(key)
    v = fn.init(k1)
    return {"params": {"student": v["params"], "method": method.init(k2)},
            "model_state": {"student": v["model_state"]}}

  def predict(params, model_state, frozen, images, head):
    del frozen, head
    return fn.apply({"params": params["student"], "model_state": model_state["student"]},
                    images, train=False)[0]

  dirname, key = distill_base.stage_dirname(dc), distill_base.results_key(dc)
  extra = {"method": dc.method, "levels": dc.get("levels", ""),
           "name": distill_base.run_name(dc)}
  if generations > 1:
    dirname = f"{dirname}/gen{generation}"
    extra["generation"] = generation
    if generation < generations - 1:  # earlier generations: `<key>_gen<g>`
      key, extra["name"] = f"{key}_gen{generation}", f"{extra['name']}_gen{generation}"
  return ModelSpec(
      what=f"{dirname} student of {name}" if generations > 1 else f"student of {name}",
      label=f"{dirname}/{name}", stage="students", dirname=dirname, name=name,
      model=Student(fn, method, source.teacher_out), init=init, predict=predict,
      meta={"student": block, "num_classes": ds.num_classes, "image_size": ds.image_size,
            "method": dc.method},
      train_cfg=c.student_train, train_key="student_train",
      num_train_examples=ds.num_examples("train"),
      train_data=lambda: ds, eval_sets=[EvalSet(name, ds)], results_key=key,
      seed=c.seed + index + 1000 * generation, pad=int(ds.pad), flip=bool(ds.flip),
      frozen=source.frozen, extra=extra)


def students(ctx: RunContext) -> list[ModelSpec]:
  """Every student of the configured run, generation by generation for each dataset."""
  generations = distill.generations(ctx.config.distill)
  return [student(ctx, name, g) for name in student_datasets(ctx) for g in range(generations)]


# The joint baseline ---------------------------------------------------------------------------
@dataclasses.dataclass
class Baseline:
  """The joint baseline as its loss sees it: one network, its input size, the head slicer."""
  fn: modelfn.ModelFn
  image_size: int
  heads: Callable[[jax.Array], list[jax.Array]]


def baseline(ctx: RunContext) -> ModelSpec:
  """One backbone trained on all datasets at once, one head per dataset: the reference
  student's architecture with one linear layer whose outputs are sliced per dataset."""
  c = ctx.config
  ref = reference_student(ctx)[0]
  block, datasets = student_config(ctx, ref), ctx.datasets()
  size = ctx.dataset(ref).image_size
  counts = [d.num_classes for d in datasets]
  offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
  fn = modelfn.from_config(block, num_classes=sum(counts), image_size=size,
                           dtype=modelfn.compute_dtype(c.student_train.get("dtype", "float32")))

  def heads(logits):
    return [logits[:, offsets[k]:offsets[k + 1]] for k in range(len(counts))]

  def predict(params, model_state, frozen, images, head):
    del frozen
    logits = fn.apply({"params": params, "model_state": model_state},
                      augment.fit(images, size), train=False)[0]
    return heads(logits)[head]

  return ModelSpec(
      what="joint baseline", label=BASELINE, stage=BASELINE, dirname=BASELINE, name="joint",
      model=Baseline(fn, size, heads), init=fn.init, predict=predict,
      meta={"model": block, "num_classes": counts, "image_size": size},
      train_cfg=c.student_train, train_key="student_train",
      num_train_examples=sum(d.num_examples("train") for d in datasets),
      train_data=lambda: data.mix(datasets),
      eval_sets=[EvalSet(n, d, head=i) for i, (n, d) in enumerate(zip(ctx.names, datasets))],
      results_key=BASELINE, seed=c.seed, pad=min(int(d.pad) for d in datasets),
      flip=all(d.flip for d in datasets))
