r"""ImageNet-1k (TFDS `imagenet2012`) cut into K disjoint class subsets, ResNet-50 at 224 px.

Each subset is relabelled 0..n-1 and treated as its own dataset (the MLFD paper's ImageNet
setting). Batch and schedule are sized for a TPU v4-32 or an 8-GPU box (global batch 1024,
bf16 compute, fp32 parameters). The data must already be prepared for TFDS: set
`--config.data_dir` or TFDS_DATA_DIR.

  # TPU VM pod slice (run on every host, see launch/tpu_vm.sh), workdir in a bucket:
  python -m mlfd_jax.main --config=configs/imagenet_subsets.py --workdir=gs://BUCKET/mlfd/in3 \
      --config.data_dir=gs://BUCKET/tfds --distributed
  # One 8-GPU box:
  python -m mlfd_jax.main --config=configs/imagenet_subsets.py --workdir=runs/in3 \
      --config.data_dir=/data/tfds
  # Five subsets instead of three:
  python -m mlfd_jax.main --config=configs/imagenet_subsets.py:k=5 --workdir=runs/in5
  # A few steps of every stage, one machine (smoke test of a real TFDS install):
  python -m mlfd_jax.main --config=configs/imagenet_subsets.py:variant=local --workdir=/tmp/in3
"""

import ml_collections

from mlfd_jax.config_lib import (apply_setting, distill_block, joint_block, model_block,
                                 parse_arg, run_keys, train_block)
from mlfd_jax.data.subsets import class_subsets

NUM_CLASSES = 1000


def get_config(arg=None):
  arg = parse_arg(arg, {"variant": "default", "k": 3, "setting": "paper"})
  if arg.variant not in ("default", "local"):
    raise ValueError(f"unknown variant {arg.variant!r}; valid: default, local")
  local = arg.variant == "local"

  c = run_keys(ml_collections.ConfigDict())
  data_dir = ml_collections.FieldReference(None, field_type=str)
  c.data_dir = data_dir  # None: TFDS_DATA_DIR or the TFDS default
  size = ml_collections.FieldReference(224)
  c.image_size = size

  c.datasets = ml_collections.ConfigDict()
  for i, classes in enumerate(class_subsets(NUM_CLASSES, arg.k)):
    c.datasets[f"in{arg.k}_{i}"] = dict(
        source="tfds", tfds_name="imagenet2012", data_dir=data_dir, train_split="train",
        test_split="validation", classes=tuple(classes), image_size=size, val_fraction=0.02,
        split_seed=0, flip=True, pad=16, shuffle_buffer=10_000)

  resnet50 = model_block("resnet50", width=1.0)
  c.teachers = ml_collections.ConfigDict(
      {n: resnet50.copy_and_resolve_references() for n in c.datasets.keys()})
  c.students = c.teachers.copy_and_resolve_references()

  batch = 32 if local else 1024
  lr = 0.1 * batch / 256

  def phase(epochs, **kw):
    if local:
      return train_block(steps=2, batch_size=batch, lr=lr, eval_every=2, log_every=1,
                         eval_batch_size=batch, **kw)
    return train_block(epochs=epochs, batch_size=batch, lr=lr, warmup_steps=5 * 1250 // 3,
                       eval_every=2000, log_every=100, dtype="bfloat16", **kw)

  c.teacher_train = phase(90)
  c.joint = joint_block(width=512)
  c.joint_train = phase(30)
  c.student_train = phase(90)
  c.distill = distill_block()
  return apply_setting(c, arg.setting)
