r"""The paper's group A, as far as it is known: CIFAR-100, Tiny ImageNet, ImageNet-Sketch.

Three datasets with three teacher families (ResNet-18, ConvNeXt-T, ViT-S), all at 224 px
(the paper trains at ImageNet resolution). CIFAR-100 and ImageNet-Sketch come from TFDS;
Tiny ImageNet from an image folder `tiny_imagenet_root/{train,val}/<class>/*.JPEG` (the
official val/ must first be sorted into class folders). Student of each dataset = its teacher.

  python -m mlfd_jax.main --config=configs/paper_group_a.py --workdir=runs/group_a \
      --config.data_dir=/data/tfds --config.tiny_imagenet_root=/data/tiny-imagenet-200
"""

import ml_collections

from mlfd_jax.config_lib import (distill_block, joint_block, model_block, parse_arg, run_keys,
                                 train_block)


def get_config(arg=None):
  parse_arg(arg, {"variant": "default"})
  c = run_keys(ml_collections.ConfigDict())
  data_dir = ml_collections.FieldReference(None, field_type=str)
  c.data_dir = data_dir
  tiny_root = ml_collections.FieldReference("/data/tiny-imagenet-200")
  c.tiny_imagenet_root = tiny_root

  c.datasets = ml_collections.ConfigDict(dict(
      cifar100=dict(source="tfds", tfds_name="cifar100", data_dir=data_dir, image_size=224,
                    val_fraction=0.1, flip=True, pad=16),
      imagenet_sketch=dict(source="tfds", tfds_name="imagenet_sketch", data_dir=data_dir,
                           train_split="train[:80%]", test_split="train[80%:]",
                           image_size=224, val_fraction=0.1, flip=True, pad=16),
      tiny_imagenet=dict(source="folder", path=tiny_root, train_split="train",
                         test_split="val", image_size=224, val_fraction=0.1, flip=True, pad=16),
  ))
  c.teachers = ml_collections.ConfigDict(dict(
      cifar100=model_block("resnet18"),
      imagenet_sketch=model_block("vit_s", patch_size=16),
      tiny_imagenet=model_block("convnext_tiny"),
  ))
  c.students = c.teachers.copy_and_resolve_references()

  def phase(epochs, **kw):
    return train_block(epochs=epochs, batch_size=256, dtype="bfloat16", eval_every=1000,
                       log_every=100, **kw)

  c.teacher_train = phase(100, optimizer="adamw", lr=1e-3, weight_decay=0.05, warmup_steps=2000)
  c.joint = joint_block(width=256, shape_like="cifar100")
  c.joint_train = phase(30, optimizer="adamw", lr=1e-3, weight_decay=0.05)
  c.student_train = phase(100, optimizer="adamw", lr=1e-3, weight_decay=0.05, warmup_steps=2000)
  c.distill = distill_block()
  return c
