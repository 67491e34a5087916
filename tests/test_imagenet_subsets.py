"""configs/imagenet_subsets.py end to end (1-2 steps per stage) on mocked TFDS ImageNet."""

import json

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from configs import imagenet_subsets  # noqa: E402
from mlfd_jax import main as mlfd_main  # noqa: E402


def test_local_variant_runs_every_stage_on_mock_imagenet(tmp_path):
  c = imagenet_subsets.get_config("variant=local")
  assert len(c.datasets) == 3
  assert c.datasets.in3_0.tfds_name == "imagenet2012" and len(c.datasets.in3_0.classes) == 334
  # Small enough for a CPU test: the ImageNet stem (> 64 px) on a tiny ResNet-50.
  c.image_size = 72
  for name in c.datasets.keys():
    c.datasets[name].val_fraction = 0.25
    c.datasets[name].shuffle_buffer = 64
    c.teachers[name].width = 0.0625
    c.students[name].width = 0.0625
  for phase in (c.teacher_train, c.joint_train, c.student_train):
    phase.batch_size = phase.eval_batch_size = 8
  c.joint.width = 8
  c.student_datasets = "in3_0"  # one ResNet-50 student is enough to run the stage (and cheaper)
  with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE):
    mlfd_main.run(c, str(tmp_path), "configs/imagenet_subsets.py:variant=local")
  res = json.loads((tmp_path / "results.json").read_text())
  assert sorted(res["datasets"]) == ["in3_0", "in3_1", "in3_2"]
  for name, entry in res["datasets"].items():
    assert entry["num_classes"] == (334 if name == "in3_0" else 333)
    models = ("teacher", "joint_teacher", "student") if name == "in3_0" else \
        ("teacher", "joint_teacher")
    assert set(models) <= set(entry) and ("student" in entry) == (name == "in3_0")
    for model in models:
      assert 0.0 <= entry[model]["test_top1"] <= entry[model]["test_top5"] <= 1.0
