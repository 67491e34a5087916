"""Every config file loads, its variants parse, and its model blocks build (shapes only)."""

import importlib

import pytest
from flax import nnx

from mlfd_jax.models import create_model

CONFIGS = {"digits": ["", "tiny"], "shared_trio": ["", "tiny"], "cifar10_same": ["", "tiny"],
           "imagenet_subsets": ["", "variant=local", "k=5"], "paper_group_a": [""]}


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
  # Every config carries every method's options, so any method runs with --config.distill.*.
  assert {"amtml", "feed", "name", "probe_steps"} <= set(c.distill.keys())
  if name == "imagenet_subsets" and arg == "k=5":
    assert len(c.datasets) == 5
    assert sum(len(b.classes) for b in c.datasets.values()) == 1000


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

