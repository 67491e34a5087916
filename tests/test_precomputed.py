"""`distill.precompute_targets` and `joint.precompute_teachers`: frozen outputs computed once per
training image and read by index give the same loss as running the frozen models live, when the
view is not augmented."""

import dataclasses
import logging

import jax
import numpy as np
import pytest

from mlfd_jax import parallel, train
from mlfd_jax.data import augment
from mlfd_jax.stages import joint as joint_stage
from mlfd_jax.stages import precomputed, specs, students
from mlfd_jax.stages.context import RunContext


def _student(config, precompute, method="mlfd", workdir=""):
  config.distill.method, config.distill.precompute_targets = method, precompute
  ctx = RunContext(config, workdir)  # teacher-sourced methods save their probes there
  for i, spec in enumerate(specs.teachers(ctx)):
    ctx.frozen.put(spec, spec.init(jax.random.key(i)))
  joint = specs.joints(ctx)[0]
  ctx.frozen.put(joint, joint.init(jax.random.key(7)))
  return ctx, specs.student(ctx, "digits_a")


def _first_losses(ctx, spec, steps=2, task=None):
  task = task or spec.task(students.distillation_loss(spec.model),
                           students.method_gate(spec.model))
  task = dataclasses.replace(task, pad=0, flip=False)  # the view the targets were computed on
  mesh = parallel.make_mesh(jax.device_count())
  trainer = train.Trainer(task, spec.train_cfg, mesh, total_steps=10)
  model, state = trainer.init(jax.random.key(0))
  key = parallel.replicated_key(1, mesh)
  batches = spec.train_data().train_batches(16, seed=0)
  out = []
  for _ in range(steps):
    model, state, metrics = trainer.step(model, state, parallel.to_global(next(batches), mesh),
                                         key)
    out.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return out


def test_table_rows_are_the_joint_teachers_outputs_on_each_image(digits_config):
  ctx, spec = _student(digits_config, precompute=True)
  rows = spec.frozen()["targets"]
  ds = ctx.dataset("digits_a")
  n = ds.num_examples("train")
  logits, feats = rows
  assert logits.shape == (n, 4) and feats["stage4"].shape[0] == n
  pick = np.array([0, 5, n - 1])
  _, direct = _student(digits_config, precompute=False)
  images = augment.normalize(ds.arrays("train")["image"][pick])
  want_logits, want_feats = direct.model.teacher_out(direct.frozen(), {"image": images})
  got_logits, got_feats = precomputed.gather(rows, pick)
  np.testing.assert_allclose(got_logits, want_logits, rtol=1e-4, atol=1e-5)
  for level in want_feats:
    np.testing.assert_allclose(got_feats[level], want_feats[level], rtol=1e-4, atol=1e-5)


# The table keeps only what the method's loss reads: avg_kd each teacher's logits (through the
# probes, on digits_a's 4 classes), feed each teacher's last map, kd the joint teacher's logits.
@pytest.mark.parametrize("method,kept", [("avg_kd", [(True, [])] * 3),
                                         ("feed", [(False, ["stage4"])] * 3),
                                         ("kd", [(True, [])])])
def test_table_holds_only_what_the_method_reads(digits_config, method, kept, tmp_path):
  ctx, spec = _student(digits_config, precompute=True, method=method, workdir=str(tmp_path))
  rows = spec.frozen()["targets"]
  pairs = rows if isinstance(rows, list) else [rows]
  assert [(logits is not None, sorted(feats)) for logits, feats in pairs] == kept
  n = ctx.dataset("digits_a").num_examples("train")
  assert all(x.shape[0] == n for x in jax.tree.leaves(rows))
  assert all(logits.shape == (n, 4) for logits, _ in pairs if logits is not None)


# amtml learns from the three stage-1 teachers' logits (through linear probes) and maps, feed_seq's
# second generation from the first generation's student: every kind of source a student has.
@pytest.mark.parametrize("method,generation", [("mlfd", 0), ("amtml", 0), ("feed_seq", 1)])
def test_same_loss_as_live_targets_on_an_unaugmented_view(digits_config, method, generation,
                                                         tmp_path):
  if method == "feed_seq":
    digits_config.distill.feed.generations = 2
  losses = {}
  for precompute in (False, True):
    ctx, _ = _student(digits_config, precompute=precompute, method=method,
                      workdir=str(tmp_path))
    if generation:
      first = specs.student(ctx, "digits_a", generation - 1)
      ctx.frozen.put(first, first.init(jax.random.key(11)))
    losses[precompute] = _first_losses(ctx, specs.student(ctx, "digits_a", generation))
  live, pre = losses[False], losses[True]
  for i, (a, b) in enumerate(zip(live, pre)):
    assert set(a) == set(b)
    for k in a:
      if k != "lr":
        # Everything agrees to 1e-6 but step 2's grad norm: the table is made by another
        # program, so its float32 sums run in another order, and one update amplifies that to
        # 2.7e-4 relative on an AVX2 host (no AVX-512). A wrong view would move every loss.
        rtol = 1e-3 if (i, k) == (1, "grad_norm") else 1e-4
        np.testing.assert_allclose(b[k], a[k], rtol=rtol, atol=1e-5, err_msg=k)
  assert live[1]["loss"] != live[0]["loss"]  # it trained


def _joint(config, precompute, finetune=False):
  config.joint.precompute_teachers, config.joint.finetune_teachers = precompute, finetune
  ctx = RunContext(config, "")
  for i, spec in enumerate(specs.teachers(ctx)):
    ctx.frozen.put(spec, spec.init(jax.random.key(i)))
  spec = specs.joints(ctx)[0]
  return ctx, spec, joint_stage.joint_task(ctx, "joint", [0, 1, 2])


def test_joint_teacher_same_loss_from_precomputed_teacher_maps(digits_config):
  ctx, spec, task = _joint(digits_config, precompute=False)
  live = _first_losses(ctx, spec, task=task)
  ctx, spec, task = _joint(digits_config, precompute=True)
  maps = task.frozen["maps"]
  assert len(maps) == 3 and maps[0].shape[0] == spec.train_data().num_examples("train")
  pre = _first_losses(ctx, spec, task=task)
  for a, b in zip(live, pre):
    for k in a:
      if k != "lr":
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)
  assert live[1]["loss"] != live[0]["loss"]


def test_precomputed_maps_refused_with_fine_tuned_teachers(digits_config):
  with pytest.raises(ValueError) as e:
    _joint(digits_config, precompute=True, finetune=True)
  assert str(e.value) == (
      "joint.precompute_teachers computes the frozen teachers' maps once, but "
      "joint.finetune_teachers=True trains the teachers; set one of them False")


def test_a_table_larger_than_what_the_steps_take_is_called_slower(digits_config, caplog):
  n = RunContext(digits_config, "").dataset("digits_a").num_examples("train")
  cfg = digits_config.student_train
  cfg.batch_size = 16
  for steps, warned in ((n // 16 - 1, True), (n // 16 + 1, False)):
    cfg.steps = steps
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      _, spec = _student(digits_config, precompute=True)
      spec.frozen()
    lines = [r.getMessage() for r in caplog.records if "precompute_targets" in r.getMessage()]
    assert lines == ([
        f"distill.precompute_targets: the joint teacher's targets for digits_a are computed "
        f"for all {n} training images of digits_a, but the stage's steps take only "
        f"{steps * 16} ({steps * 16 / n:.2f} epochs), so this is slower than running them "
        f"live; set --config.distill.precompute_targets=False unless you want its accuracy "
        f"effect"] if warned else [])
