r"""The same-dataset setting of AMTML-KD and FEED: three teachers of different architectures
(ResNet-18, ConvNeXt-atto, ViT-Ti, all narrowed for 2 CPU cores) trained on the same CIFAR-10
subset from `../shared/data`, and one ResNet-18 student.

The framework trains one teacher per configured dataset, so the CIFAR-10 subset is configured
three times under names that say the teacher's architecture; the blocks are identical, so the
teachers share one label space and keep their own heads as logits (no probes). Only the first
dataset gets students (`student_datasets`); MLFD's joint teacher fuses all three teachers.

  python -m mlfd_jax.main --config=configs/cifar10_same.py --workdir=runs/same/seed0
  python -m mlfd_jax.main --config=configs/cifar10_same.py --workdir=runs/same/seed0 \
      --config.stage=students --config.distill.method=amtml
  launch/seeds.sh configs/cifar10_same.py runs/same 3 --methods "kd avg_kd amtml feed"
  python -m mlfd_jax.main --config=configs/cifar10_same.py:tiny --workdir=/tmp/same  # seconds
"""

import ml_collections

from mlfd_jax.config_lib import (distill_block, joint_block, model_block, parse_arg, run_keys,
                                 train_block)

TEACHERS = {"cifar10_resnet18": model_block("resnet18", width=0.125),
            "cifar10_convnext": model_block("convnext_atto", width=0.25),
            "cifar10_vit": model_block("vit_ti", width=1 / 6, depth=4, num_heads=2)}


def get_config(arg=None):
  arg = parse_arg(arg, {"variant": "default"})
  if arg.variant not in ("default", "tiny"):
    raise ValueError(f"unknown variant {arg.variant!r}; valid: default, tiny")
  tiny = arg.variant == "tiny"

  c = run_keys(ml_collections.ConfigDict())
  root = ml_collections.FieldReference("../shared/data")
  c.data_root = root

  c.datasets = ml_collections.ConfigDict()
  for name in TEACHERS:
    c.datasets[name] = dict(source="npz", path=root + "/cifar10_subset.npz", image_size=32,
                            val_fraction=0.1, split_seed=0, flip=True, pad=4)
  c.teachers = ml_collections.ConfigDict({n: b.copy_and_resolve_references()
                                          for n, b in TEACHERS.items()})
  c.students = c.teachers.copy_and_resolve_references()
  c.student_datasets = "cifar10_resnet18"

  # Teachers and students share one schedule (AdamW suits all three families), so the
  # ResNet-18 teacher is the student's `individual` baseline.
  steps = {"teacher": 3 if tiny else 400, "joint": 3 if tiny else 400,
           "student": 3 if tiny else 400}
  every = 3 if tiny else 200
  c.teacher_train = train_block(steps=steps["teacher"], batch_size=64, optimizer="adamw",
                                lr=2e-3, weight_decay=0.05, warmup_steps=0 if tiny else 50,
                                eval_every=every)
  c.joint = joint_block(shape_like="cifar10_resnet18")
  c.joint_train = train_block(steps=steps["joint"], batch_size=64, optimizer="adamw", lr=2e-3,
                              weight_decay=0.05, eval_every=every)
  c.student_train = c.teacher_train.copy_and_resolve_references()
  c.distill = distill_block()
  return c
