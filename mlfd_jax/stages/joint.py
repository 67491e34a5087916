"""Stage 2: the joint teacher, frozen stage-1 teachers fused by trainable layers.

Mode `all` (the paper, default): one fusion network with one head per dataset, trained on mixed
batches from all datasets, each sample's loss on its own dataset's head -> `WORKDIR/joint/joint`.
Mode `per_dataset` (the reference code): one fusion network per target dataset, trained on that
dataset only -> `WORKDIR/joint/<dataset>`. Either way every fusion network sees every teacher.

The teachers are frozen inputs (`Task.frozen`), run in inference mode under `stop_gradient`; only
the fusion part is trained, optimised and checkpointed — unless `joint.finetune_teachers`, which
moves the teachers' parameters into the trained set (their BatchNorm stays in inference mode).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from mlfd_jax import data, modelfn, train
from mlfd_jax.data import augment
from mlfd_jax.models import FeatureSpace, feature_space
from mlfd_jax.models.fusion import MAP_LEVELS, FusionHead
from mlfd_jax.stages import STAGES, common, teacher_store, teachers as teachers_stage

STAGE = "joint"
ALL = "joint"  # the directory name of the mode-`all` joint teacher
MODES = ("all", "per_dataset")


def student_block(config, name: str) -> dict:
  """A dataset's student model: `config.students.<name>`, else its teacher's architecture."""
  if name in config.students:
    return dict(config.students[name].to_dict())
  return common.model_block(config, "teachers", name)


def reference_student(config, names, datasets
                      ) -> tuple[str, dict[str, tuple[int, ...]], FeatureSpace]:
  """The dataset whose student the joint teacher's levels imitate, their shapes, and the
  student's feature space (what activation ends a level, how the dense level is pooled)."""
  ref = config.joint.get("shape_like", "") or names[0]
  if ref not in names:
    raise ValueError(f"joint.shape_like={ref!r} is not a configured dataset; valid: "
                     f"{', '.join(names)}")
  ds = datasets[names.index(ref)]
  block = student_block(config, ref)
  student = common.model_fn(block, num_classes=ds.num_classes, image_size=ds.image_size,
                            train_cfg=config.student_train)
  return ref, modelfn.level_shapes(student, ds.image_size), feature_space(block["name"])


@dataclasses.dataclass
class JointTeacher:
  """Frozen teachers + a FusionHead, as functions of (fusion variables, teacher variables)."""

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

  def apply(self, params, model_state, frozen, images, *, train: bool, key=None):
    """Returns (logits per head, fused levels, new model_state)."""
    maps = self.teacher_maps(self.split_teachers(params, frozen), images)
    logits, feats, new_state = self.fusion.apply(
        {"params": params["fusion"], "model_state": model_state["fusion"]}, maps, train=train,
        key=key)
    return logits, feats, {"fusion": new_state}


def multihead_ce(logits_per_head, labels, dataset_ids, label_smoothing: float):
  """Mean over the batch of each sample's cross-entropy on its own dataset's head."""
  total, correct = 0.0, 0.0
  for k, logits in enumerate(logits_per_head):
    mine = dataset_ids == k
    lab = jnp.where(mine, labels, 0)
    onehot = jax.nn.one_hot(lab, logits.shape[-1])
    if label_smoothing:
      onehot = optax.smooth_labels(onehot, label_smoothing)
    total = total + jnp.sum(optax.softmax_cross_entropy(logits, onehot) * mine)
    correct = correct + jnp.sum((jnp.argmax(logits, -1) == lab) * mine)
  n = labels.shape[0]
  return total / n, correct / n


def build_joint(config, names, datasets, heads: list[int], mesh_dtype_cfg) -> JointTeacher:
  """The joint teacher over all teachers with heads for `datasets[i] for i in heads`."""
  jc = config.joint
  level = jc.fusion_level
  if level not in MAP_LEVELS:
    raise ValueError(f"joint.fusion_level={level!r} is not a map level; valid: "
                     f"{', '.join(MAP_LEVELS)}")
  teachers, sizes, widths = [], [], []
  for name, ds in zip(names, datasets):
    fn = common.model_fn(common.model_block(config, "teachers", name),
                         num_classes=ds.num_classes, image_size=ds.image_size,
                         train_cfg=mesh_dtype_cfg)
    shapes = modelfn.level_shapes(fn, ds.image_size)
    if level not in shapes:
      raise ValueError(f"teacher of {name} has no level {level!r}; it has: "
                       f"{', '.join(shapes)}")
    teachers.append(fn)
    sizes.append(ds.image_size)
    widths.append(shapes[level][-1])
  _, targets, space = reference_student(config, names, datasets)
  dtype = modelfn.compute_dtype(mesh_dtype_cfg.get("dtype", "float32"))
  num_classes = [datasets[i].num_classes for i in heads]
  fusion = modelfn.ModelFn(lambda rngs: FusionHead(
      teacher_widths=widths, fusion_level=level, target_shapes=targets, target_space=space,
      num_classes=num_classes, width=int(jc.width), dropout=float(jc.dropout), rngs=rngs,
      dtype=dtype))
  emitted = (*MAP_LEVELS[MAP_LEVELS.index(level):], "pooled")
  return JointTeacher(teachers, sizes, fusion, level, {k: targets[k] for k in emitted},
                      finetune=bool(jc.finetune_teachers))


def joint_meta(config, names, heads, datasets) -> dict:
  jc = config.joint
  return {"teachers": [common.model_block(config, "teachers", n) for n in names],
          "heads": [names[i] for i in heads],
          "num_classes": [datasets[i].num_classes for i in heads],
          "fusion": {k: jc[k] for k in ("fusion_level", "width", "shape_like", "mode")},
          "finetune_teachers": bool(jc.finetune_teachers),
          "reference_student": reference_student(config, names, datasets)[0]}


def joint_task(config, joint: JointTeacher, teacher_vars, meta: dict, *, pad: int, flip: bool
               ) -> train.Task:
  smoothing = float(config.joint_train.label_smoothing)

  def init(key):
    v = joint.init(key)
    if joint.finetune:
      v["params"]["teachers"] = [tv["params"] for tv in teacher_vars]
    return v

  def loss(params, model_state, frozen, batch, key):
    logits, _, new_state = joint.apply(params, model_state, frozen, batch["image"], train=True,
                                       key=key)
    ids = batch.get("dataset", jnp.zeros_like(batch["label"]))
    ce, top1 = multihead_ce(logits, batch["label"], ids, smoothing)
    return ce, (new_state, {"ce": ce, "top1": top1})

  def predict(params, model_state, frozen, images, head):
    return joint.apply(params, model_state, frozen, images, train=False)[0][head]

  return train.Task(name="joint", init=init, loss=loss, predict=predict,
                    frozen={"teachers": teacher_vars}, pad=pad, flip=flip, meta=meta)


def load_teachers(config, workdir, names, datasets, mesh, config_path):
  """Each dataset's finished stage-1 teacher (best by validation), replicated on `mesh`."""
  out = []
  for name, ds in zip(names, datasets):
    task = teachers_stage.teacher_task(config, name, ds)
    out.append(teacher_store.restore_finished(
        task, common.stage_dir(workdir, teachers_stage.STAGE, name), what=f"teacher of {name}",
        stage=teachers_stage.STAGE, workdir=workdir, config_path=config_path,
        train_cfg=config.teacher_train, num_train_examples=ds.num_examples("train"), mesh=mesh))
  return out


def targets(config, names) -> list[tuple[str, list[int]]]:
  """(directory name, head dataset indices) of each joint teacher the mode asks for."""
  mode = config.joint.mode
  if mode not in MODES:
    raise ValueError(f"unknown joint.mode {mode!r}; valid: {', '.join(MODES)}")
  if mode == "all":
    return [(ALL, list(range(len(names))))]
  return [(name, [i]) for i, name in enumerate(names)]


def build_task(config, workdir, names, datasets, mesh, config_path, heads,
               teacher_vars=None) -> train.Task:
  joint = build_joint(config, names, datasets, heads, config.joint_train)
  if teacher_vars is None:
    teacher_vars = load_teachers(config, workdir, names, datasets, mesh, config_path)
  members = [datasets[i] for i in heads]
  return joint_task(config, joint, teacher_vars, joint_meta(config, names, heads, datasets),
                    pad=min(int(d.pad) for d in members), flip=all(d.flip for d in members))


@STAGES.register(STAGE)
def run(config, workdir: str, *, config_path: str = "") -> None:
  mesh = common.mesh(config)
  names = common.dataset_names(config)
  datasets = [common.build_dataset(config, n) for n in names]
  teacher_vars = []  # restored on first use, shared by every joint teacher of the mode

  def make_task(heads):
    if not teacher_vars:
      teacher_vars.extend(load_teachers(config, workdir, names, datasets, mesh, config_path))
    return build_task(config, workdir, names, datasets, mesh, config_path, heads, teacher_vars)

  for target, heads in targets(config, names):
    members = [datasets[i] for i in heads]
    common.train_and_report(
        lambda heads=heads: make_task(heads),
        data.mix(members) if len(members) > 1 else members[0],
        [train.EvalSet(names[i], datasets[i], head=h) for h, i in enumerate(heads)],
        config.joint_train, stage=STAGE, name=target, workdir=workdir, config=config,
        config_path=config_path, mesh=mesh, seed=config.seed, model="joint_teacher",
        num_classes={n: d.num_classes for n, d in zip(names, datasets)})
