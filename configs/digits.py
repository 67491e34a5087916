r"""Offline demo: scikit-learn's bundled digits cut into three datasets by class.

digits_a = {0,1,2,3}, digits_b = {4,5,6}, digits_c = {7,8,9}, each relabelled from 0 and treated
as a distinct dataset, with two teacher architectures among them (ResNet-18 and ConvNeXt-atto at
a small width). Runs every stage on 2 CPU cores in minutes; no download.

  python -m mlfd_jax.main --config=configs/digits.py --workdir=runs/digits
  python -m mlfd_jax.main --config=configs/digits.py --workdir=runs/digits --config.stage=teachers
  python -m mlfd_jax.main --config=configs/digits.py:tiny --workdir=/tmp/d   # seconds; for tests
"""

import ml_collections

from mlfd_jax.config_lib import (distill_block, joint_block, model_block, parse_arg, run_keys,
                                 train_block)
from mlfd_jax.data.subsets import class_subsets

NAMES = ("digits_a", "digits_b", "digits_c")


def get_config(arg=None):
  arg = parse_arg(arg, {"variant": "default"})
  if arg.variant not in ("default", "tiny"):
    raise ValueError(f"unknown variant {arg.variant!r}; valid: default, tiny")
  tiny = arg.variant == "tiny"
  steps = 4 if tiny else 300

  c = run_keys(ml_collections.ConfigDict())

  c.datasets = ml_collections.ConfigDict()
  for name, classes in zip(NAMES, class_subsets(10, 3)):
    c.datasets[name] = dict(source="sklearn_digits", classes=tuple(classes), image_size=16,
                            val_fraction=0.15, split_seed=0, flip=False, pad=2)

  resnet = model_block("resnet18", width=0.125)
  convnext = model_block("convnext_atto", width=0.2, depths=(1, 1, 1, 1))
  c.teachers = ml_collections.ConfigDict(
      {"digits_a": resnet, "digits_b": convnext, "digits_c": resnet.copy_and_resolve_references()})
  c.teacher_train = train_block(steps=steps, batch_size=64, lr=0.05, warmup_steps=0 if tiny else 20,
                                eval_every=2 if tiny else 100, log_every=2 if tiny else 50)

  # Stage 2: the joint teacher fuses the teachers' stage2 maps and emits student-shaped maps at
  # stage2..stage4 plus the pooled vector; its shapes follow digits_a's student.
  c.joint = joint_block(fusion_level="stage2", width=16)
  c.joint_train = train_block(steps=4 if tiny else 250, batch_size=64, optimizer="adamw",
                              lr=2e-3, weight_decay=0.05, eval_every=2 if tiny else 125,
                              log_every=2 if tiny else 50)

  # Stage 3: each student has its dataset's teacher architecture (override per dataset with
  # --config.students.<dataset>.name=...).
  c.students = c.teachers.copy_and_resolve_references()
  c.student_train = c.teacher_train.copy_and_resolve_references()
  c.distill = distill_block()
  return c
