"""MLFD stages 2-3: fusion shapes, frozen teachers, the loss, stage chaining and its errors."""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mlfd_jax import distill, modelfn
from mlfd_jax import main as mlfd_main
from mlfd_jax import data
from mlfd_jax.stages import joint as joint_stage, specs
from mlfd_jax.stages.context import RunContext

NAMES = ("digits_a", "digits_b", "digits_c")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One `all` run of the tiny digits demo, shared by the tests of this module (copy to mutate)."""
  from configs import digits
  workdir = tmp_path_factory.mktemp("digits_all")
  mlfd_main.run(digits.get_config("tiny"), str(workdir), "configs/digits.py:tiny")
  return workdir


def _copy(trained, tmp_path):
  dst = tmp_path / "w"
  shutil.copytree(trained, dst)
  return dst


def test_all_writes_every_model_of_every_dataset(trained):
  res = json.loads((trained / "results.json").read_text())
  for name in NAMES:
    entry = res["datasets"][name]
    for model in ("teacher", "joint_teacher", "student"):
      assert 0.0 <= entry[model]["test_top1"] <= 1.0, (name, model)
    assert "baseline_joint" not in entry
  assert (trained / "joint" / "joint" / "config.json").exists()


def test_fusion_emits_the_reference_students_shapes_for_mixed_teachers(digits_config):
  c = digits_config
  # Three families at three resolutions.
  c.datasets.digits_b.image_size = 24
  c.datasets.digits_c.image_size = 32
  c.teachers.digits_c = dict(name="vit_ti", width=0.1, depth=4, patch_size=4)
  ctx = RunContext(c, "")
  joint = specs.joint_model(ctx, [0, 1, 2])
  _, ref, _ = specs.reference_student(ctx)
  teacher_vars = [fn.init(jax.random.key(i)) for i, fn in enumerate(joint.teachers)]
  v = joint.init(jax.random.key(3))
  images = jnp.ones((2, 20, 20, 3))  # any batch resolution: each teacher gets its own
  logits, feats, _ = joint.apply(v["params"], v["model_state"], {"teachers": teacher_vars},
                                 images, train=False)
  assert [l.shape for l in logits] == [(2, 4), (2, 3), (2, 3)]
  assert set(feats) == {"stage2", "stage3", "stage4", "pooled"}
  for level, f in feats.items():
    assert f.shape[1:] == ref[level], level
  assert joint.level_shapes == {k: ref[k] for k in feats}


def _joint_task(c, finetune=False):
  c.joint.finetune_teachers = finetune
  ctx = RunContext(c, "")
  fns = specs.joint_model(ctx, [0, 1, 2]).teachers
  for i, spec in enumerate(specs.teachers(ctx)):
    ctx.frozen.put(spec, fns[i].init(jax.random.key(i)))
  task = joint_stage.joint_task(ctx, "joint", [0, 1, 2])
  batch = next(data.mix(ctx.datasets()).train_batches(8, seed=0))
  batch = {**batch, "image": jnp.asarray(batch["image"], jnp.float32) / 255.0}
  return task, batch


@pytest.mark.parametrize("finetune", [False, True])
def test_teachers_get_no_gradient_unless_fine_tuned(digits_config, finetune):
  task, batch = _joint_task(digits_config, finetune)
  v = task.init(jax.random.key(0))
  assert ("teachers" in v["params"]) == finetune  # only what trains is optimised/checkpointed

  def loss_of(params, frozen):
    return task.loss(params, v["model_state"], frozen, batch, jax.random.key(1))[0]

  g_params, g_frozen = jax.grad(loss_of, argnums=(0, 1))(v["params"], task.frozen)
  # Frozen teacher parameters get exactly zero gradient. (When fine-tuning, the trained copy in
  # `params` is used instead; the frozen BatchNorm statistics then see a gradient, unused.)
  frozen_params = [t["params"] for t in g_frozen["teachers"]]
  checked = frozen_params if finetune else g_frozen
  assert sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(checked)) == 0.0
  fusion_norm = sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(g_params["fusion"]))
  assert fusion_norm > 0
  if finetune:
    assert sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(g_params["teachers"])) > 0
  # Teachers' BatchNorm stays in inference mode: their statistics are not in the new state.
  _, (new_state, _) = task.loss(v["params"], v["model_state"], task.frozen, batch,
                                jax.random.key(1))
  assert set(new_state) == {"fusion"}


def _np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_mlfd_loss_matches_a_hand_computed_value():
  rng = np.random.default_rng(0)
  zs, zt = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
  fs = {"stage4": rng.normal(size=(2, 2, 2, 4)), "pooled": rng.normal(size=(2, 4))}
  ft = {"stage4": rng.normal(size=(2, 2, 2, 4)), "pooled": rng.normal(size=(2, 4))}
  y = np.array([0, 2])
  shapes = {k: v.shape[1:] for k, v in fs.items()}
  cfg = ml_collections.ConfigDict(dict(method="mlfd", levels="all", w_kd=0.6, w_feat=0.2,
                                       w_ce=0.2, temperature=2.0, label_smoothing=0.0))
  method = distill.build_method(cfg, student_shapes=shapes, teacher_shapes=shapes,
                                total_steps=10)
  total, terms = method.loss(method.init(jax.random.key(0)), student=(zs, fs), teacher=(zt, ft),
                             labels=y)
  t = 2.0
  pt, lpt, lps = np.exp(_np_log_softmax(zt / t)), _np_log_softmax(zt / t), _np_log_softmax(zs / t)
  kd = t * t * np.mean(np.sum(pt * (lpt - lps), -1))
  ce = -np.mean(_np_log_softmax(zs)[np.arange(2), y])
  feat = np.mean((fs["stage4"] - ft["stage4"]) ** 2) + np.mean((fs["pooled"] - ft["pooled"]) ** 2)
  np.testing.assert_allclose(float(terms["kd"]), kd, rtol=1e-5)
  np.testing.assert_allclose(float(terms["ce"]), ce, rtol=1e-5)
  np.testing.assert_allclose(float(terms["feat"]), feat, rtol=1e-5)
  np.testing.assert_allclose(float(total), 0.6 * kd + 0.2 * feat + 0.2 * ce, rtol=1e-5)
  # `last` level only: the reference code.
  cfg.levels = "stage4"
  last = distill.build_method(cfg, student_shapes=shapes, teacher_shapes=shapes,
                                total_steps=10)
  _, t_last = last.loss({}, student=(zs, fs), teacher=(zt, ft), labels=y)
  assert set(k for k in t_last if k.startswith("feat/")) == {"feat/stage4"}
  # kd: no feature term at all.
  cfg.method = "kd"
  kd_total, _ = distill.build_method(cfg, student_shapes=shapes, teacher_shapes=shapes,
                                total_steps=10).loss(
      {}, student=(zs, fs), teacher=(zt, ft), labels=y)
  np.testing.assert_allclose(float(kd_total), 0.6 * kd + 0.2 * ce, rtol=1e-5)


def test_student_side_adaptor_when_widths_differ():
  cfg = ml_collections.ConfigDict(dict(method="mlfd", levels="all", w_kd=0.6, w_feat=0.2,
                                       w_ce=0.2, temperature=2.0))
  m = distill.build_method(cfg, student_shapes={"stage4": (2, 2, 8), "pooled": (8,)},
                           teacher_shapes={"stage4": (4, 4, 16), "pooled": (8,)},
                           total_steps=10)
  p = m.init(jax.random.key(0))
  assert set(p["adaptors"]) == {"stage4"} and p["adaptors"]["stage4"]["kernel"].shape == (8, 16)
  _, terms = m.loss(p, student=(jnp.zeros((1, 3)), {"stage4": jnp.ones((1, 2, 2, 8)),
                                                     "pooled": jnp.ones((1, 8))}),
                    teacher=(jnp.zeros((1, 3)), {"stage4": jnp.ones((1, 4, 4, 16)),
                                                 "pooled": jnp.ones((1, 8))}),
                    labels=jnp.zeros((1,), jnp.int32))
  assert np.isfinite(float(terms["feat/stage4"]))


def test_interrupted_all_run_resumes_and_finishes(trained, tmp_path, digits_config):
  w = _copy(trained, tmp_path)
  # Interrupted inside the students stage: digits_b has only its step-2 checkpoint, digits_c none.
  shutil.rmtree(w / "students" / "digits_b" / "4")
  shutil.rmtree(w / "students" / "digits_c")
  res = json.loads((w / "results.json").read_text())
  for n in ("digits_b", "digits_c"):
    del res["datasets"][n]["student"]
  (w / "results.json").write_text(json.dumps(res))
  teachers_before = {p: p.stat().st_mtime_ns for p in (w / "teachers").rglob("*") if p.is_file()}
  mlfd_main.run(digits_config, str(w), "configs/digits.py:tiny")
  res = json.loads((w / "results.json").read_text())
  assert all("student" in res["datasets"][n] for n in NAMES)
  assert sorted(int(p.name) for p in (w / "students" / "digits_b").iterdir()
                if p.name.isdigit()) == [2, 4]
  assert {p: p.stat().st_mtime_ns for p in (w / "teachers").rglob("*")
          if p.is_file()} == teachers_before


def test_a_retrained_model_is_evaluated_anew_and_a_finished_one_is_not(trained, tmp_path,
                                                                        digits_config):
  w = _copy(trained, tmp_path)
  res = json.loads((w / "results.json").read_text())
  # Stale numbers of an earlier digits_b student with the same step numbers; digits_c's entry
  # is marked so that a needless re-evaluation would show.
  res["datasets"]["digits_b"]["student"]["test_top1"] = -1.0
  res["datasets"]["digits_c"]["student"]["test_top1"] = -2.0
  (w / "results.json").write_text(json.dumps(res))
  shutil.rmtree(w / "students" / "digits_b")
  digits_config.stage = "students"
  mlfd_main.run(digits_config, str(w), "configs/digits.py:tiny")
  res = json.loads((w / "results.json").read_text())["datasets"]
  entry = res["digits_b"]["student"]
  assert entry["test_top1"] >= 0.0
  meta = w / "students" / "digits_b" / str(entry["last"]["step"]) / "_CHECKPOINT_METADATA"
  assert entry["saved_at"] == json.loads(meta.read_text())["commit_timestamp_nsecs"]
  assert res["digits_c"]["student"]["test_top1"] == -2.0


def test_joint_without_teachers_names_the_command(digits_config, tmp_path):
  digits_config.stage = "joint"
  with pytest.raises(FileNotFoundError, match=r"teacher of digits_a .*--config.stage=teachers"):
    mlfd_main.run(digits_config, str(tmp_path), "configs/digits.py:tiny")


def test_joint_with_a_teacher_of_another_architecture(trained, tmp_path, digits_config):
  w = _copy(trained, tmp_path)
  shutil.rmtree(w / "joint")
  digits_config.stage = "joint"
  digits_config.teachers.digits_b.width = 0.4
  with pytest.raises(ValueError, match=r"teacher of digits_b.*0\.4.*stage=teachers"):
    mlfd_main.run(digits_config, str(w))


def test_students_without_joint_teacher(trained, tmp_path, digits_config):
  w = _copy(trained, tmp_path)
  shutil.rmtree(w / "joint")
  shutil.rmtree(w / "students")
  digits_config.stage = "students"
  with pytest.raises(FileNotFoundError, match=r"joint teacher.*--config.stage=joint"):
    mlfd_main.run(digits_config, str(w))


@pytest.mark.parametrize("mutate, message", [
    (lambda c: setattr(c.joint, "fusion_level", "stage9"), "stage9"),
    (lambda c: setattr(c.joint, "mode", "each"), "'each'"),
    (lambda c: setattr(c.distill, "levels", "stage1,stage4"), "stage1"),
    (lambda c: setattr(c.distill, "method", "fitnet"), "'fitnet'"),
    (lambda c: setattr(c.joint, "shape_like", "digits_z"), "digits_z"),
])
def test_bad_fusion_or_distillation_settings(trained, tmp_path, digits_config, mutate, message):
  w = _copy(trained, tmp_path)
  shutil.rmtree(w / "joint")
  shutil.rmtree(w / "students")
  digits_config.stage = "joint" if "joint" in message or "stage9" in message or \
      "each" in message or "digits_z" in message else "all"
  mutate(digits_config)
  with pytest.raises(mlfd_main.INPUT_ERRORS, match=message):
    mlfd_main.run(digits_config, str(w))


def test_level_shapes_of_a_student():
  from configs import digits
  c = digits.get_config("tiny")
  fn = modelfn.from_config(dict(c.students.digits_a), num_classes=4, image_size=16)
  shapes = modelfn.level_shapes(fn, 16)
  assert shapes["stage1"] == (16, 16, 8) and shapes["pooled"] == (64,)


def test_learning_curves_of_every_model(trained, tmp_path, capsys):
  from mlfd_jax import curves
  table = curves.collect([str(trained)])
  assert sorted(table) == list(NAMES)
  for name in NAMES:
    assert set(table[name]) == {"individual", "joint_teacher", "mlfd"}
    # eval_every=2 over 4 steps: validation at steps 2 and 4, accuracies in [0, 1]
    for label, runs in table[name].items():
      assert [s for s, _ in runs[0]] == [2, 4], (name, label)
      assert all(0.0 <= v <= 1.0 for _, v in runs[0])
  out = tmp_path / "c.png"
  assert curves.main([str(trained), "--out", str(out)]) == 0
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  capsys.readouterr()
  assert curves.main([str(tmp_path / "nope"), "--out", str(out)]) == 2
  missing = tmp_path / "nope" / "tensorboard"
  assert capsys.readouterr().err == f"mlfd_jax.curves: error: no TensorBoard files at {missing}\n"


def test_a_teacher_or_student_loads_from_its_directory_alone_and_scores_as_reported(trained,
                                                                                     tmp_path):
  """`classifier.load(DIR)` rebuilds a network from DIR/config.json alone, restores the step
  results.json reports onto one device (the run saved it over the 8-device mesh), and its
  predictions on the test split give the recorded test top-1: a ResNet teacher and student, a
  ConvNeXt teacher. A joint teacher, or the joint baseline (a config.json like its), is refused
  in one sentence."""
  from configs import digits
  from mlfd_jax import classifier
  ctx = RunContext(digits.get_config("tiny"), str(trained))
  res = json.loads((trained / "results.json").read_text())["datasets"]
  for name, kind, folder in [("digits_a", "teacher", "teachers"), ("digits_a", "student", "students"),
                             ("digits_b", "teacher", "teachers")]:
    model = classifier.load(str(trained / folder / name))
    recorded = res[name][kind]
    assert (model.kind, model.step, model.num_classes) == (kind, recorded["step"],
                                                           ctx.dataset(name).num_classes)
    assert {x.sharding.device_set.pop() for x in jax.tree.leaves(model.variables)} == {
        jax.local_devices()[0]}
    correct = total = 0
    for batch in ctx.dataset(name).eval_batches("test", 16):
      pred = np.asarray(model(batch["image"])).argmax(-1)
      correct += int(((pred == batch["label"]) * batch["mask"]).sum())
      total += int(batch["mask"].sum())
    assert correct / total == pytest.approx(recorded["test_top1"], abs=1e-9), (name, kind)
  baseline = tmp_path / "baseline_joint" / "joint"
  baseline.mkdir(parents=True)
  (baseline / "config.json").write_text(json.dumps({"meta": {
      "model": {"name": "resnet18", "width": 0.125}, "num_classes": [4, 3, 3], "image_size": 8}}))
  for directory in (trained / "joint" / "joint", baseline):
    with pytest.raises(ValueError, match="only a teacher's or a student's checkpoints load"):
      classifier.load(str(directory))


def _confidence_rows(workdir, argv, capsys):
  """tools/confidence.py's table rows for `workdir` (it is a script, not a package module)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("confidence", "tools/confidence.py")
  confidence = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(confidence)
  confidence.main(argv)
  return [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()
          if line.startswith(f"| {workdir} ")]


def test_confidence_tool_scores_each_network_as_reported(trained, capsys):
  """tools/confidence.py (the soft-label diagnostic of docs/results.md) finds every teacher,
  student and joint-teacher head of a workdir, and on the test split gives results.json's test
  top-1 for each, with a top-class probability and an entropy a softmax can have."""
  import math
  rows = _confidence_rows(trained, ["configs/digits.py:tiny", str(trained), "--split", "test"],
                          capsys)
  res = json.loads((trained / "results.json").read_text())["datasets"]
  key = {"teacher": "teacher", "student": "student", "joint teacher": "joint_teacher"}
  assert sorted((r[1].strip(), r[2].strip()) for r in rows) == sorted(
      (kind, name) for name in res for kind in key)
  for _, kind, name, step, top1, top_prob, entropy in rows:
    recorded, classes = res[name.strip()][key[kind.strip()]], res[name.strip()]["num_classes"]
    assert int(step) == recorded["step"]
    assert float(top1) == pytest.approx(recorded["test_top1"], abs=1e-4)
    assert 1 / classes <= float(top_prob) <= 1 and 0 <= float(entropy) <= math.log(classes)


def test_confidence_tool_reads_moved_data_for_the_joint_teacher_too(tmp_path, capsys):
  """A run's data files moved since it trained: `--data_root` points every model at the new
  place, the joint teacher included, whose config.json recorded the old paths."""
  import pathlib
  from configs import tiny_imagenet_subsets
  data = pathlib.Path("..", "shared", "data").resolve()
  if not (data / "tiny_imagenet30_32.npz").exists():
    pytest.skip("../shared/data is not beside the checkout")
  old = tmp_path / "old_data"
  old.symlink_to(data)
  config = tiny_imagenet_subsets.get_config("tiny")
  config.data_root = str(old)
  workdir = tmp_path / "w"
  mlfd_main.run(config, str(workdir), "configs/tiny_imagenet_subsets.py:tiny")
  old.unlink()
  rows = _confidence_rows(workdir, ["configs/tiny_imagenet_subsets.py:tiny", str(workdir),
                                    "--split", "test", "--data_root", str(data)], capsys)
  res = json.loads((workdir / "results.json").read_text())["datasets"]
  joint = {r[2].strip(): float(r[4]) for r in rows if r[1].strip() == "joint teacher"}
  assert joint == pytest.approx({name: res[name]["joint_teacher"]["test_top1"] for name in res},
                                abs=1e-4)


@pytest.mark.parametrize("argv, error", [
    (["configs/digits.py:tiny", "WORK", "{tmp}/nowhere"],
     "{tmp}/nowhere holds no teachers/, students/ or joint/ folder: not a run's workdir"),
    (["configs/nope.py", "WORK"],
     "config file 'configs/nope.py' does not exist; available: configs/cifar10_same.py, "
     "configs/digits.py, configs/imagenet_subsets.py, configs/paper_group_a.py, "
     "configs/shared_trio.py, configs/tiny_imagenet_subsets.py"),
])
def test_confidence_tool_refuses_a_path_that_is_no_workdir_in_one_line(tmp_path, argv, error):
  """A mistyped workdir printed an empty table with exit code 0, a missing config file a
  traceback; each is one line on stderr now (exit code 2), before any table."""
  import pathlib
  import subprocess
  import sys
  work = tmp_path / "w"
  (work / "teachers").mkdir(parents=True)
  argv = [a.replace("WORK", str(work)).replace("{tmp}", str(tmp_path)) for a in argv]
  r = subprocess.run([sys.executable, "tools/confidence.py", *argv], capture_output=True,
                     text=True, timeout=120, cwd=pathlib.Path(__file__).resolve().parents[1])
  assert r.returncode == 2
  assert r.stderr == f"confidence.py: error: {error.replace('{tmp}', str(tmp_path))}\n"
  assert r.stdout == ""
