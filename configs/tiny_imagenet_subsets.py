r"""30 Tiny ImageNet classes at 32 px cut into K disjoint class subsets: the CPU twin of
configs/imagenet_subsets.py.

One domain (natural images), distinct label spaces, one dataset per subset, each relabelled
0..n-1: the setting of the paper's ImageNet-subsets benchmarks, on `tiny_imagenet30_32.npz`
from `../shared/data` (500 train and 50 test images per class). Small ResNet-18s (width 1/8:
8..64 channels) everywhere, schedules sized to plateau on 2 CPU cores.

  python -m mlfd_jax.main --config=configs/tiny_imagenet_subsets.py --workdir=runs/tin/seed0
  python -m mlfd_jax.main --config=configs/tiny_imagenet_subsets.py:k=5 --workdir=runs/tin5
  # the paper authors' code: fuse at the last map, one joint teacher per dataset, last map only
  python -m mlfd_jax.main --config=configs/tiny_imagenet_subsets.py:setting=reference \
      --workdir=runs/tin_ref
  # twice the width, twice the steps, the CIFAR-10 subset as one more dataset:
  python -m mlfd_jax.main --config=configs/tiny_imagenet_subsets.py:width=0.25,budget=2,cifar=1 \
      --workdir=runs/tin_wide
  python -m mlfd_jax.main --config=configs/tiny_imagenet_subsets.py:tiny --workdir=/tmp/tin
  launch/seeds.sh configs/tiny_imagenet_subsets.py runs/tin 3 \
      --methods "kd mlfd_last avg_kd amtml feed" --baseline_joint

`data_root` moves the data files; `width` scales every model, `teacher_width` the teachers
alone (wider teachers, students kept small); `budget` multiplies every stage's steps.
"""

import ml_collections

from mlfd_jax.config_lib import (apply_setting, distill_block, joint_block, model_block,
                                 parse_arg, run_keys, train_block)
from mlfd_jax.data.subsets import class_subsets

NUM_CLASSES = 30
FILE = "tiny_imagenet30_32.npz"
CIFAR = "cifar10_subset.npz"
# Steps of 128 images at budget 1: 4500 training images per 10-class subset, so the teachers
# and students see ~17 epochs; the joint teacher sees mixed batches from all subsets.
STEPS = {"teacher": 600, "joint": 600, "student": 600}


def get_config(arg=None):
  arg = parse_arg(arg, {"variant": "default", "k": 3, "setting": "paper", "width": 0.125,
                        "teacher_width": 0.0, "budget": 1.0, "cifar": 0})
  if arg.variant not in ("default", "tiny"):
    raise ValueError(f"unknown variant {arg.variant!r}; valid: default, tiny")
  if not arg.budget > 0:
    raise ValueError(f"budget must be > 0, got {arg.budget}")
  tiny = arg.variant == "tiny"

  c = run_keys(ml_collections.ConfigDict())
  root = ml_collections.FieldReference("../shared/data")
  c.data_root = root

  c.datasets = ml_collections.ConfigDict()
  for i, classes in enumerate(class_subsets(NUM_CLASSES, arg.k)):
    c.datasets[f"tin{arg.k}_{i}"] = dict(
        source="npz", path=root + f"/{FILE}", classes=tuple(classes), image_size=32,
        val_fraction=0.1, split_seed=0, flip=True, pad=4)
  if arg.cifar:
    c.datasets.cifar10 = dict(source="npz", path=root + f"/{CIFAR}", classes=None,
                              image_size=32, val_fraction=0.1, split_seed=0, flip=True, pad=4)

  names = list(c.datasets.keys())
  student = model_block("resnet18", width=arg.width)
  teacher = model_block("resnet18", width=arg.teacher_width or arg.width)
  c.teachers = ml_collections.ConfigDict({n: teacher.copy_and_resolve_references()
                                          for n in names})
  c.students = ml_collections.ConfigDict({n: student.copy_and_resolve_references()
                                          for n in names})

  steps = {k: 3 if tiny else max(1, round(v * arg.budget)) for k, v in STEPS.items()}
  batch = 16 if tiny else 128

  def every(n):
    return 3 if tiny else max(1, n // 9)

  c.teacher_train = train_block(steps=steps["teacher"], batch_size=batch, lr=0.1,
                                warmup_steps=0 if tiny else 50,
                                eval_every=every(steps["teacher"]), log_every=every(
                                    steps["teacher"]))
  c.joint = joint_block()
  c.joint_train = train_block(steps=steps["joint"], batch_size=batch, optimizer="adamw",
                              lr=2e-3, weight_decay=0.05, eval_every=every(steps["joint"]),
                              log_every=every(steps["joint"]))
  c.student_train = train_block(steps=steps["student"], batch_size=batch, lr=0.1,
                                warmup_steps=0 if tiny else 50,
                                eval_every=every(steps["student"]),
                                log_every=every(steps["student"]))
  c.distill = distill_block()
  if tiny:
    c.distill.probe_steps, c.distill.probe_examples = 5, 64
  return apply_setting(c, arg.setting)
