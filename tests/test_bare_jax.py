"""Every stage runs on a host with only jax/flax/optax/orbax (no TensorFlow, TFDS, clu or
TensorBoard), as many GPU hosts are: `stage=all` on an in-memory config, metrics to the log.
The tiny_imagenet_subsets run is also that config's end-to-end test (on the real 30-class
file; with TensorFlow installed only the metric writer differs)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


@pytest.mark.parametrize("config", ["configs/digits.py:tiny",
                                    "configs/tiny_imagenet_subsets.py:tiny"])
def test_stage_all_without_tensorflow_tfds_or_tensorboard(config, tmp_path):
  if "tiny_imagenet" in config and not (DATA / "tiny_imagenet30_32.npz").exists():
    pytest.skip("../shared/data is not beside the checkout")
  env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "bare_jax"),
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  probe = subprocess.run([sys.executable, "-c", "import importlib.util as u; "
                          "print(u.find_spec('tensorflow'), u.find_spec('tensorboard'))"],
                         env=env, capture_output=True, text=True)
  assert probe.stdout.strip() == "None None"  # the host really looks bare
  data = [f"--config.data_root={DATA}"] if "tiny_imagenet" in config else []
  r = subprocess.run([sys.executable, "-m", "mlfd_jax.main", f"--config={config}",
                      f"--workdir={tmp_path}", *data],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "tensorboard is not installed: metrics go to the log only" in r.stderr
  results = json.loads((tmp_path / "results.json").read_text())["datasets"]
  names = ["tin3_0", "tin3_1", "tin3_2"] if "tiny_imagenet" in config else \
      ["digits_a", "digits_b", "digits_c"]
  assert sorted(results) == names
  for entry in results.values():
    if "tiny_imagenet" in config:
      assert entry["num_classes"] == 10
    for model in ("teacher", "joint_teacher", "student"):
      assert 0.0 <= entry[model]["test_top1"] <= entry[model]["test_top5"] <= 1.0
