"""Runs repeat bit for bit on one machine; the seed, and only the seed, changes them.

Batches, augmentation and initialisation are functions of (seed, step), and XLA:CPU's results
are fixed for a given machine (instruction set, usable cores), so the same command twice must
give the same parameters and the same results.json (issue 10, fault 5). So do a teacher
trained alone (`teacher_datasets`) and a student trained alone (`student_datasets`), as
launch/seed_lanes.sh's lanes train them.
"""

import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from mlfd_jax import main as mlfd_main

NAMES = ("digits_a", "digits_b", "digits_c")


def _params(directory):
  mngr = ocp.CheckpointManager(str(directory))
  model = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
      model=ocp.args.StandardRestore()))["model"]
  return [np.asarray(x) for x in jax.tree.leaves(model["params"])]


def _results(workdir):
  """results.json without the checkpoints' write times (`saved_at`), which differ by design."""
  def strip(x):
    if isinstance(x, dict):
      return {k: strip(v) for k, v in x.items() if k != "saved_at"}
    return x
  return strip(json.loads((workdir / "results.json").read_text()))


def _run(config, workdir, seed):
  config.seed = seed
  mlfd_main.run(config, str(workdir), "configs/digits.py:tiny")


def test_same_seed_same_everything_other_seed_other_parameters(tmp_path):
  from configs import digits
  a, b, other = tmp_path / "a", tmp_path / "b", tmp_path / "seed1"
  _run(digits.get_config("tiny"), a, 0)
  _run(digits.get_config("tiny"), b, 0)
  assert _results(a) == _results(b)
  entry = _results(a)["datasets"]["digits_a"]["student"]
  assert entry["machine"]["cores"] >= 1 and entry["machine"]["jax"] == jax.__version__
  for stage, name in [("teachers", n) for n in NAMES] + [("joint", "joint")] + \
      [("students", n) for n in NAMES]:
    for x, y in zip(_params(a / stage / name), _params(b / stage / name), strict=True):
      np.testing.assert_array_equal(x, y, err_msg=f"{stage}/{name}")

  config = digits.get_config("tiny")
  config.stage = "teachers"
  _run(config, other, 1)
  for name in NAMES:
    assert any(not np.array_equal(x, y) for x, y in zip(_params(a / "teachers" / name),
                                                          _params(other / "teachers" / name)))

  # A teacher trained on its own (`teacher_datasets`, as launch/seed_lanes.sh's lanes train a
  # seed's teachers in separate processes) is the one the whole stage trains.
  _assert_alone_matches_whole(a, tmp_path / "digits_b_alone", "teachers", "digits_b")
  # So is a student trained on its own (`student_datasets`: a lane's part of a method) from the
  # same teachers and joint teacher.
  _assert_alone_matches_whole(a, tmp_path / "digits_c_student", "students", "digits_c")


def _assert_alone_matches_whole(whole, alone, stage, name):
  """Train `name` alone in stage `stage` (a student from a copy of `whole`'s teachers and joint
  teacher) and require its results entry and parameters to equal those of the run `whole`."""
  entry = {"teachers": "teacher", "students": "student"}[stage]
  alone.mkdir()
  if stage == "students":
    for d in ("teachers", "joint"):
      shutil.copytree(whole / d, alone / d)
    shutil.copy(whole / "results.json", alone / "results.json")
  from configs import digits
  config = digits.get_config("tiny")
  config.stage = stage
  config[f"{entry}_datasets"] = name
  _run(config, alone, 0)
  assert sorted(p.name for p in (alone / stage).iterdir()) == [name]
  assert _results(alone)["datasets"][name][entry] == _results(whole)["datasets"][name][entry]
  for x, y in zip(_params(alone / stage / name), _params(whole / stage / name), strict=True):
    np.testing.assert_array_equal(x, y, err_msg=f"{stage}/{name} alone")
