r"""MNIST + Fashion-MNIST + a CIFAR-10 subset from `../shared/data`, all at 32x32x3.

Three real datasets with distinct label spaces, small ResNet-18s (width 1/8: 8..64 channels)
everywhere and short schedules (400 steps of 64 images per teacher and student; 600 for the
joint teacher, whose fusion layers start from scratch and see a third of each dataset's
images): sized so that every method of the README's results trains to a meaningful accuracy
on 2 CPU cores, in minutes per model. `data_root` moves all three files at once.

  python -m mlfd_jax.main --config=configs/shared_trio.py --workdir=runs/trio/seed0
  python -m mlfd_jax.main --config=configs/shared_trio.py --workdir=runs/trio/seed1 \
      --config.seed=1 --config.data_root=/path/to/shared/data
  python -m mlfd_jax.main --config=configs/shared_trio.py:tiny --workdir=/tmp/trio   # seconds
"""

import ml_collections

from mlfd_jax.config_lib import (apply_setting, distill_block, joint_block, model_block,
                                 parse_arg, run_keys, train_block)

FILES = {"cifar10": ("cifar10_subset.npz", True), "fashion_mnist": ("fashion_mnist.npz", True),
         "mnist": ("mnist.npz", False)}


def get_config(arg=None):
  arg = parse_arg(arg, {"variant": "default", "setting": "paper"})
  if arg.variant not in ("default", "tiny"):
    raise ValueError(f"unknown variant {arg.variant!r}; valid: default, tiny")
  tiny = arg.variant == "tiny"

  c = run_keys(ml_collections.ConfigDict())
  root = ml_collections.FieldReference("../shared/data")
  c.data_root = root

  c.datasets = ml_collections.ConfigDict()
  for name, (filename, flip) in FILES.items():
    c.datasets[name] = dict(source="npz", path=root + f"/{filename}", image_size=32,
                            val_fraction=0.1, split_seed=0, flip=flip, pad=4)

  model = model_block("resnet18", width=0.125)
  c.teachers = ml_collections.ConfigDict({n: model.copy_and_resolve_references() for n in FILES})
  c.students = c.teachers.copy_and_resolve_references()

  steps = {"teacher": 3 if tiny else 400, "joint": 3 if tiny else 600,
           "student": 3 if tiny else 400}
  every = 3 if tiny else 200
  c.teacher_train = train_block(steps=steps["teacher"], batch_size=64, lr=0.1,
                                warmup_steps=0 if tiny else 50, eval_every=every)
  c.joint = joint_block()
  c.joint_train = train_block(steps=steps["joint"], batch_size=64, optimizer="adamw", lr=2e-3,
                              weight_decay=0.05, eval_every=every)
  c.student_train = train_block(steps=steps["student"], batch_size=64, lr=0.1,
                                warmup_steps=0 if tiny else 50, eval_every=every)
  c.distill = distill_block()
  return apply_setting(c, arg.setting)
