"""Every config file loads, its variants parse, and its model blocks build (shapes only)."""

import importlib

import pytest
from flax import nnx

from mlfd_jax.models import create_model

CONFIGS = {"digits": ["", "tiny"], "shared_trio": ["", "tiny", "setting=reference"],
           "cifar10_same": ["", "tiny"],
           "imagenet_subsets": ["", "variant=local", "k=5", "setting=reference"],
           "paper_group_a": [""],
           "tiny_imagenet_subsets": ["", "tiny", "k=5", "setting=reference",
                                     "width=0.25,teacher_width=0.5,budget=2,cifar=1"]}


@pytest.mark.parametrize("name, arg", [(n, a) for n, args in CONFIGS.items() for a in args])
def test_config_loads_and_models_build(name, arg):
  c = importlib.import_module(f"configs.{name}").get_config(arg or None)
  assert c.stage == "all" and set(c.teachers.keys()) == set(c.datasets.keys())
  assert set(c.students.keys()) == set(c.datasets.keys())
  for ds_name, block in c.datasets.items():
    assert block.image_size > 0 and block.source in ("sklearn_digits", "npz", "tfds", "folder")
    for group in (c.teachers, c.students):
      m = dict(group[ds_name])
      model = nnx.eval_shape(lambda: create_model(m.pop("name"), num_classes=10,
                                                  image_size=block.image_size, rngs=nnx.Rngs(0),
                                                  **m))
      assert model.image_size == block.image_size
  for phase in (c.teacher_train, c.joint_train, c.student_train):
    assert phase.steps > 0 or phase.epochs > 0
  # Every config carries every method's options, so any method runs with --config.distill.*,
  # and every documented top-level key, so --config.student_datasets=... works everywhere.
  assert {"amtml", "feed", "name", "probe_steps"} <= set(c.distill.keys())
  assert {"stage", "seed", "num_devices", "student_datasets", "teacher_datasets"} <= set(c.keys())
  if "setting=reference" in arg:
    # The paper authors' code: fuse at the last map, one joint teacher per dataset, last map.
    assert (c.joint.fusion_level, c.joint.mode, c.distill.method) == (
        "stage4", "per_dataset", "mlfd_last")
  else:
    assert (c.joint.mode, c.distill.method) == ("all", "mlfd")
  if name == "imagenet_subsets" and arg == "k=5":
    assert len(c.datasets) == 5
    assert sum(len(b.classes) for b in c.datasets.values()) == 1000
  if name == "tiny_imagenet_subsets":
    subsets = [b.classes for n, b in c.datasets.items() if n.startswith("tin")]
    assert sorted(x for s in subsets for x in s) == list(range(30))  # disjoint, all 30
    assert len(subsets) == (5 if "k=5" in arg else 3)
    if "cifar=1" in arg:
      assert c.datasets.cifar10.path.endswith("cifar10_subset.npz")
      assert c.teachers.cifar10.width == 0.5 and c.students.cifar10.width == 0.25
      assert c.student_train.steps == 2 * 600


def test_unknown_variant_names_itself():
  from configs import digits
  with pytest.raises(ValueError, match="'huge'"):
    digits.get_config("huge")
  with pytest.raises(ValueError, match="'sizes'"):
    digits.get_config("sizes=3")


def test_shared_data_root_moves_every_path():
  from configs import shared_trio
  c = shared_trio.get_config()
  c.data_root = "/elsewhere"
  assert {b.path for b in c.datasets.values()} == {
      "/elsewhere/mnist.npz", "/elsewhere/fashion_mnist.npz", "/elsewhere/cifar10_subset.npz"}



# configs/tiny_imagenet_subsets.py:tiny runs end to end in test_bare_jax.py (every stage, on
# the real 30-class file; only the metric writer differs with TensorFlow installed).
