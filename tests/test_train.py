"""The shared loop: sharding invariance, exact resume, restore on another device count."""

import dataclasses
import logging
import os
import re
import shutil

import jax
import numpy as np
import pytest

from mlfd_jax import checkpoint, parallel, train
from mlfd_jax.data import augment
from mlfd_jax.stages import teachers
from mlfd_jax.stages.context import RunContext


def _teacher(config, name="digits_a"):
  ctx = RunContext(config, "")
  return ctx.dataset(name), teachers.teacher_task(ctx, name)


def _run_steps(task, ds, cfg, mesh, steps, seed=0):
  trainer = train.Trainer(task, cfg, mesh, total_steps=steps)
  model, state = trainer.init(jax.random.key(seed))
  key = parallel.replicated_key(seed + 1, mesh)
  batches = ds.train_batches(int(cfg.batch_size), seed=seed)
  losses = []
  for _ in range(steps):
    batch = parallel.to_global(next(batches), mesh)
    model, state, m = trainer.step(model, state, batch, key)
    losses.append(float(m["loss"]))
  return jax.device_get(model), losses


def test_eight_devices_compute_the_same_parameters_as_one(digits_config):
  assert jax.device_count() == 8
  cfg = digits_config.teacher_train
  cfg.batch_size = 16
  ds, task = _teacher(digits_config)
  # No random crop here (its sharding invariance is the next test): some crops of the upscaled
  # digits put whole flat regions exactly at a ReLU kink, where 1e-7 reduction-order noise between
  # 1 and 8 shards flips their gradients and the runs drift apart by ~1e-3 in two steps.
  task = dataclasses.replace(task, pad=0)
  # A stable step size: at the demo's lr (0.1) the loss jumps between steps and amplifies that
  # noise too.
  cfg.optimizer.lr = 0.01
  one, losses1 = _run_steps(task, ds, cfg, parallel.make_mesh(1), steps=3)
  eight, losses8 = _run_steps(task, ds, cfg, parallel.make_mesh(8), steps=3)
  assert losses1[-1] != losses1[0]  # it trained
  np.testing.assert_allclose(losses1, losses8, rtol=1e-4)
  flat1, flat8 = jax.tree.leaves(one), jax.tree.leaves(eight)
  assert len(flat1) == len(flat8) > 10
  for a, b in zip(flat1, flat8):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_augmentation_is_the_same_on_any_sharding(digits_config):
  ds, _ = _teacher(digits_config)
  images = next(ds.train_batches(16, seed=0))["image"]
  views = []
  for n in (1, 8):
    batch = parallel.to_global({"image": images}, parallel.make_mesh(n))
    views.append(np.asarray(jax.jit(lambda x: augment.augment(x, jax.random.key(3), pad=2,
                                                              flip=True))(batch["image"])))
  np.testing.assert_array_equal(views[0], views[1])
  assert not np.array_equal(views[0], images)  # it did crop or flip


def test_resume_reproduces_the_uninterrupted_run(digits_config, tmp_path):
  cfg = digits_config.teacher_train
  cfg.steps, cfg.eval_every = 6, 3
  ds, task = _teacher(digits_config)
  mesh = parallel.make_mesh(2)
  full, _ = train.fit(task, ds, [train.EvalSet("a", ds)], cfg, str(tmp_path / "full"), mesh=mesh,
                   seed=0)
  part, _ = train.fit(task, ds, [train.EvalSet("a", ds)], cfg, str(tmp_path / "part"), mesh=mesh,
                   seed=0)
  assert part.steps() == [3, 6]
  # Interrupt: lose the final checkpoint, so the next fit must resume from step 3.
  shutil.rmtree(os.path.join(part.directory, "6"))
  part.close()
  resumed, _ = train.fit(task, ds, [train.EvalSet("a", ds)], cfg, str(tmp_path / "part"),
                      mesh=mesh, seed=0)
  assert resumed.latest_step() == 6
  a = train.restore_model(full, task, mesh, 6)
  b = train.restore_model(resumed, task, mesh, 6)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_finished_directory_is_not_retrained(digits_config, tmp_path):
  ds, task = _teacher(digits_config)
  mesh = parallel.make_mesh(1)
  cfg = digits_config.teacher_train
  ck, _ = train.fit(task, ds, [train.EvalSet("a", ds)], cfg, str(tmp_path), mesh=mesh, seed=0)
  stamp = {s: os.stat(os.path.join(ck.directory, str(s))).st_mtime_ns for s in ck.steps()}
  ck.close()
  again, _ = train.fit(task, ds, [train.EvalSet("a", ds)], cfg, str(tmp_path), mesh=mesh, seed=0)
  assert {s: os.stat(os.path.join(again.directory, str(s))).st_mtime_ns
          for s in again.steps()} == stamp


def test_restore_on_a_different_device_count_and_best_step(digits_config, tmp_path):
  ds, task = _teacher(digits_config)
  cfg = digits_config.teacher_train
  ck, _ = train.fit(task, ds, [train.EvalSet("a", ds)], cfg, str(tmp_path),
                    mesh=parallel.make_mesh(8), seed=0)
  on8 = train.restore_model(ck, task, parallel.make_mesh(8), ck.latest_step())
  on1 = train.restore_model(ck, task, parallel.make_mesh(1), ck.latest_step())
  leaf = jax.tree.leaves(on1)[0]
  assert len(leaf.sharding.device_set) == 1
  for x, y in zip(jax.tree.leaves(on8), jax.tree.leaves(on1)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  scores = {s: ck.metrics(s)[checkpoint.VAL_METRIC] for s in ck.steps()}
  assert ck.best_step() == max(scores, key=lambda s: (scores[s], s))


def test_checkpoint_made_for_another_model_is_refused(digits_config, tmp_path):
  ds, task = _teacher(digits_config, "digits_a")
  mesh = parallel.make_mesh(1)
  train.fit(task, ds, [train.EvalSet("a", ds)], digits_config.teacher_train, str(tmp_path),
            mesh=mesh, seed=0)[0].close()
  digits_config.teachers.digits_a.name = "resnet34"
  digits_config.teacher_train.steps = 8
  _, other = _teacher(digits_config, "digits_a")
  with pytest.raises(ValueError, match="resnet34"):
    train.fit(other, ds, [train.EvalSet("a", ds)], digits_config.teacher_train, str(tmp_path),
              mesh=mesh, seed=0)


def test_num_steps_from_epochs(digits_config):
  cfg = digits_config.teacher_train
  cfg.steps, cfg.epochs, cfg.batch_size = 0, 2.0, 64
  assert train.num_steps(cfg, 100) == 4
  cfg.epochs = 0.0
  with pytest.raises(ValueError, match="steps"):
    train.num_steps(cfg, 100)


def test_gated_params_hold_exactly_under_momentum_and_weight_decay():
  """A task's `gate_updates` freezes params from a step on, whatever the optimizer's state."""
  import jax.numpy as jnp
  from ml_collections import ConfigDict

  def loss(params, model_state, frozen, batch, key):
    x = batch["image"].reshape(batch["image"].shape[0], -1)[:, :2]
    err = x @ (params["frozen_later"] + params["free"]) - 1.0
    return jnp.mean(err ** 2), (model_state, {})

  task = train.Task(
      name="gate", loss=loss, predict=lambda *a: None, pad=0,
      init=lambda key: {"params": {"frozen_later": jnp.ones((2, 2)), "free": jnp.ones((2, 2))},
                        "model_state": {}},
      gate_updates=lambda u, step: {**u, "frozen_later": jnp.where(
          step < 2, u["frozen_later"], jnp.zeros_like(u["frozen_later"]))})
  cfg = ConfigDict({"batch_size": 8, "schedule": {"name": "constant"},
                    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9,
                                  "weight_decay": 0.1}})
  mesh = parallel.make_mesh()
  trainer = train.Trainer(task, cfg, mesh, total_steps=6)
  model, state = trainer.init(jax.random.key(0))
  key = parallel.replicated_key(1, mesh)
  batch = parallel.to_global(
      {"image": np.full((8, 2, 2, 3), 200, np.uint8), "label": np.zeros(8, np.int32)}, mesh)
  seen = []
  for _ in range(6):
    model, state, _ = trainer.step(model, state, batch, key)
    seen.append(jax.device_get(model["params"]))
  assert not np.allclose(seen[0]["frozen_later"], 1.0)  # it trained before the gate closed
  for later in seen[2:]:
    np.testing.assert_array_equal(later["frozen_later"], seen[1]["frozen_later"])
  assert not np.allclose(seen[-1]["free"], seen[1]["free"])



def test_a_trained_model_logs_where_its_time_went(digits_config, tmp_path, caplog):
  cfg = digits_config.teacher_train
  cfg.steps, cfg.eval_every = 4, 2
  ds, task = _teacher(digits_config)
  mesh = parallel.make_mesh(1)
  pattern = re.compile(r"\[teacher/digits_a\] trained steps (\d+)-4 in ([\d.]+)s: steps "
                       r"([\d.]+)s \((\d+) img/s\), validation ([\d.]+)s, checkpoints ([\d.]+)s")

  def summaries():
    found = [pattern.fullmatch(r.getMessage()) for r in caplog.records]
    caplog.clear()
    return [m for m in found if m]

  with caplog.at_level(logging.INFO):
    ck, _ = train.fit(task, ds, [train.EvalSet("a", ds)], cfg, str(tmp_path), mesh=mesh, seed=0)
    (m,) = summaries()
    start, total, steps, rate, val, saves = (float(g) for g in m.groups())
    assert start == 0 and val > 0 and saves > 0
    assert abs(total - (steps + val + saves)) <= 0.15  # the three parts are the whole
    assert rate == pytest.approx(4 * cfg.batch_size / steps, rel=0.1)
    shutil.rmtree(os.path.join(ck.directory, "4"))  # lose the end: resume from step 2
    ck.close()
    train.fit(task, ds, [train.EvalSet("a", ds)], cfg, str(tmp_path), mesh=mesh, seed=0)
    (m,) = summaries()
    assert m.group(1) == "2"
    train.fit(task, ds, [train.EvalSet("a", ds)], cfg, str(tmp_path), mesh=mesh, seed=0)
    assert summaries() == []  # a finished model trains nothing, so it reports nothing


def test_init_compiled_for_speed_draws_the_default_compiles_variables(digits_config):
  """`Trainer.init` compiles its one-off program with cheaper XLA:CPU options; the variables it
  draws are bit for bit those of the default compilation (a ResNet-18 and a ConvNeXt teacher)."""
  mesh = parallel.make_mesh()
  for name in ("digits_a", "digits_b"):  # resnet18 and convnext_atto in configs/digits.py
    _, task = _teacher(digits_config, name)
    trainer = train.Trainer(task, digits_config.teacher_train, mesh, total_steps=4)
    fast = trainer.init(jax.random.key(3))
    default = jax.jit(trainer._make, out_shardings=trainer.shardings)(jax.random.key(3))
    leaves = jax.tree.leaves(default)
    assert jax.tree.structure(fast) == jax.tree.structure(default) and len(leaves) > 50
    for a, b in zip(jax.tree.leaves(fast), leaves):
      assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
