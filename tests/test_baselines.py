"""The joint baseline: one backbone, one head per dataset, trained on mixed batches."""

import json

import jax
import jax.numpy as jnp

from mlfd_jax import main as mlfd_main
from mlfd_jax.stages import baselines
from mlfd_jax.stages.context import RunContext


def test_baseline_joint_heads_and_results(digits_config, tmp_path):
  c = digits_config
  ctx = RunContext(c, str(tmp_path))
  names = ctx.names
  task = baselines.baseline_task(ctx)
  v = task.init(jax.random.key(0))
  images = jnp.zeros((2, 16, 16, 3))
  assert [task.predict(v["params"], v["model_state"], None, images, h).shape
          for h in range(3)] == [(2, 4), (2, 3), (2, 3)]
  # A sample's loss only involves its own dataset's head: changing another head's label
  # range does not matter, changing its own label does.
  batch = {"image": jnp.ones((2, 16, 16, 3)), "label": jnp.array([3, 0]),
           "dataset": jnp.array([0, 2])}
  loss_a = task.loss(v["params"], v["model_state"], None, batch, jax.random.key(1))[0]
  loss_b = task.loss(v["params"], v["model_state"], None, {**batch, "label": jnp.array([1, 0])},
                     jax.random.key(1))[0]
  assert float(loss_a) != float(loss_b)

  c.stage = "baseline_joint"
  mlfd_main.run(c, str(tmp_path), "configs/digits.py:tiny")
  res = json.loads((tmp_path / "results.json").read_text())
  for n in names:
    entry = res["datasets"][n]
    assert 0.0 <= entry["baseline_joint"]["test_top1"] <= 1.0 and "teacher" not in entry
  assert (tmp_path / "baseline_joint" / "joint" / "config.json").exists()
  # The eval stage finds and re-evaluates it.
  (tmp_path / "results.json").unlink()
  c.stage = "eval"
  mlfd_main.run(c, str(tmp_path), "configs/digits.py:tiny")
  res = json.loads((tmp_path / "results.json").read_text())
  assert set(res["datasets"]) == set(names)
  assert all("baseline_joint" in res["datasets"][n] for n in names)
