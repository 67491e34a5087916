"""`sharding="fsdp"`: a trained model's state split over 8 fake CPU devices, or over groups of 2
of them (`fsdp_size=2`, the hybrid layout), computes what the replicated run computes, and its
checkpoints restore under any layout."""

import dataclasses
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from mlfd_jax import checkpoint, parallel, train
from mlfd_jax.stages import teachers
from mlfd_jax.stages.context import RunContext

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def small_threshold(monkeypatch):
  """The demo's models are tiny: shard every tensor of 256 elements or more."""
  monkeypatch.setattr(parallel, "FSDP_MIN_SIZE", 256)


def _spec(shape, mesh):
  return tuple(parallel.leaf_sharding(shape, mesh).spec)


def test_leaf_rule_splits_the_largest_divisible_dimension_and_keeps_small_tensors_whole():
  fsdp, repl = parallel.make_mesh(8, "fsdp"), parallel.make_mesh(8)
  assert dict(fsdp.shape) == {"data": 1, "fsdp": 8} and dict(repl.shape) == {"data": 8, "fsdp": 1}
  assert _spec((3, 3, 64, 128), fsdp) == (None, None, None, "fsdp")  # largest: 128
  assert _spec((3, 3, 128, 128), fsdp) == (None, None, None, "fsdp")  # a tie: the later one
  assert _spec((1000, 12), fsdp) == ("fsdp",)  # 1000 = 8 x 125; 12 is not a multiple of 8
  assert _spec((4097, 3), fsdp) == ()  # nothing divides: replicated
  assert _spec((512,), fsdp) == ()  # small: replicated
  assert _spec((3, 3, 64, 128), repl) == ()  # replicated mode: everything whole
  hybrid = parallel.make_mesh(8, "fsdp", fsdp_size=2)  # 4 groups of 2 devices
  assert dict(hybrid.shape) == {"data": 4, "fsdp": 2}
  assert _spec((3, 3, 64, 128), hybrid) == (None, None, None, "fsdp")
  assert _spec((1000, 12), hybrid) == ("fsdp",)  # both divide by 2: the larger, 1000
  assert _spec((4097, 3), hybrid) == ()


def _trainer(config, mesh):
  ctx = RunContext(config, "")
  task = dataclasses.replace(teachers.teacher_task(ctx, "digits_a"), pad=0)
  return ctx.dataset("digits_a"), train.Trainer(task, config.teacher_train, mesh, total_steps=3)


def _steps(trainer, ds, mesh, steps=3):
  model, state = trainer.init(jax.random.key(0))
  key = parallel.replicated_key(1, mesh)
  batches = ds.train_batches(int(trainer.cfg.batch_size), seed=0)
  for _ in range(steps):
    model, state, _ = trainer.step(model, state, parallel.to_global(next(batches), mesh), key)
  return model, state


@pytest.mark.parametrize("fsdp_size", [0, 2], ids=["over_all_8", "hybrid_4x2"])
def test_fsdp_trains_the_same_parameters_as_replicated(digits_config, small_threshold, fsdp_size):
  digits_config.teacher_train.batch_size = 16
  digits_config.teacher_train.optimizer.lr = 0.01  # a stable step (see test_train.py)
  repl_mesh, fsdp_mesh = parallel.make_mesh(8), parallel.make_mesh(8, "fsdp", fsdp_size)
  parts = fsdp_size or 8
  ds, repl_trainer = _trainer(digits_config, repl_mesh)
  _, fsdp_trainer = _trainer(digits_config, fsdp_mesh)
  a_model, _ = _steps(repl_trainer, ds, repl_mesh)
  b_model, b_state = _steps(fsdp_trainer, ds, fsdp_mesh)

  sharded = [x for x in jax.tree.leaves((b_model, b_state)) if "fsdp" in tuple(x.sharding.spec)]
  assert len(sharded) >= 10, "fsdp sharded almost nothing"
  for x in sharded:  # each device holds 1/parts of the tensor
    assert x.addressable_shards[0].data.size * parts == x.size
  momentum = [x for x in jax.tree.leaves(b_state["opt_state"])
              if x.size >= 256 and any(d % parts == 0 for d in x.shape)]
  assert momentum and all("fsdp" in tuple(x.sharding.spec) for x in momentum)

  flat_a, flat_b = jax.tree.leaves(a_model), jax.tree.leaves(b_model)
  assert len(flat_a) == len(flat_b) > 10
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=2e-5)


def test_a_checkpoint_restores_across_sharding_modes(digits_config, small_threshold, tmp_path):
  fsdp_mesh, one = parallel.make_mesh(8, "fsdp"), parallel.make_mesh(1)
  ds, fsdp_trainer = _trainer(digits_config, fsdp_mesh)
  model, state = _steps(fsdp_trainer, ds, fsdp_mesh, steps=1)
  ck = checkpoint.Checkpoints(str(tmp_path / "ck"))
  ck.save(1, model, state, metrics={"val_top1": 0.5})

  _, repl_trainer = _trainer(digits_config, one)  # replicated, on 1 device
  hybrid = parallel.make_mesh(8, "fsdp", fsdp_size=2)
  _, hybrid_trainer = _trainer(digits_config, hybrid)
  (m1, s1) = ck.restore(1, *repl_trainer.abstract())
  (m8, s8) = ck.restore(1, *fsdp_trainer.abstract())  # and back under fsdp on 8
  (mh, sh) = ck.restore(1, *hybrid_trainer.abstract())  # and under the hybrid 4 x 2 layout
  for saved, on1, on8, onh in zip(jax.tree.leaves((model, state)), jax.tree.leaves((m1, s1)),
                                  jax.tree.leaves((m8, s8)), jax.tree.leaves((mh, sh))):
    assert len(on1.sharding.device_set) == 1 and on8.sharding == saved.sharding
    assert onh.sharding == parallel.leaf_sharding(tuple(saved.shape), hybrid)
    for restored in (on1, on8, onh):
      np.testing.assert_array_equal(np.asarray(restored), np.asarray(saved))
  ck.close()


@pytest.mark.parametrize("flags, error", [
    (["--config.sharding=zero3"], "sharding='zero3' is not one of: replicated, fsdp"),
    (["--config.sharding=fsdp", "--config.fsdp_size=3"],
     "fsdp_size=3 does not divide the 8 devices; use 0 (all) or one of: 1, 2, 4, 8"),
    (["--config.fsdp_size=2"], "fsdp_size=2 needs sharding='fsdp' (it is 'replicated')"),
], ids=["unknown_sharding", "fsdp_size_not_a_divisor", "fsdp_size_without_fsdp"])
def test_a_bad_sharding_is_one_line(tmp_path, flags, error):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  r = subprocess.run([sys.executable, "-m", "mlfd_jax.main", "--config=configs/digits.py:tiny",
                      f"--workdir={tmp_path / 'w'}", *flags],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2
  assert r.stderr == f"mlfd_jax: error: {error} (MLFD_TRACEBACK=1 shows where)\n"
