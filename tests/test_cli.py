"""The command line as a user meets it: configs, stage 1 end to end, bad input, kill -9 resume."""

import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mlfd_jax import main as mlfd_main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cli(*args, timeout=600, **kw):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  return subprocess.run([sys.executable, "-m", "mlfd_jax.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, **kw)


def _tree_digest(path):
  h = hashlib.sha256()
  for p in sorted(pathlib.Path(path).rglob("*")):
    if p.is_file():
      h.update(str(p.relative_to(path)).encode())
      h.update(p.read_bytes())
  return h.hexdigest()


@pytest.fixture(scope="module")
def teachers_dir(tmp_path_factory):
  """The tiny demo's stage 1, run once for this module (copy it to mutate)."""
  from configs import digits
  c = digits.get_config("tiny")
  c.stage = "teachers"
  workdir = tmp_path_factory.mktemp("teachers")
  mlfd_main.run(c, str(workdir), "configs/digits.py:tiny")
  return workdir


def test_teachers_stage_writes_results(teachers_dir):
  tmp_path = teachers_dir
  res = json.loads((tmp_path / "results.json").read_text())
  assert res["config"] == "configs/digits.py:tiny" and res["seed"] == 0
  assert sorted(res["datasets"]) == ["digits_a", "digits_b", "digits_c"]
  assert [res["datasets"][n]["num_classes"] for n in ("digits_a", "digits_b", "digits_c")] == [4, 3, 3]
  for entry in res["datasets"].values():
    t = entry["teacher"]
    assert 0.0 <= t["test_top1"] <= t["test_top5"] <= 1.0
    assert set(t) >= {"val_top1", "test_top1", "test_top5", "step", "last"}
    assert "student" not in entry  # not trained -> absent, never zero
  for name in ("digits_a", "digits_b", "digits_c"):
    d = tmp_path / "teachers" / name
    assert (d / "config.json").exists() and (d / "4").is_dir()
  assert any((tmp_path / "tensorboard" / "teachers" / "digits_a").iterdir())


@pytest.mark.parametrize("mutate, message", [
    (lambda c: setattr(c, "stage", "teacher"), "unknown stage 'teacher'"),
    (lambda c: setattr(c.datasets.digits_a, "source", "mnsit"), "'mnsit'"),
    (lambda c: setattr(c.teachers.digits_a, "name", "resnet19"), "'resnet19'"),
    (lambda c: setattr(c.teacher_train.optimizer, "name", "adam"), "'adam'"),
    (lambda c: setattr(c.teacher_train.schedule, "name", "linear"), "'linear'"),
    (lambda c: setattr(c.teacher_train, "batch_size", 63), "batch_size=63"),
    (lambda c: setattr(c.teacher_train, "dtype", "fp16"), "'fp16'"),
])
def test_bad_input_names_the_value_and_keeps_checkpoints(digits_config, teachers_dir, tmp_path,
                                                        mutate, message):
  shutil.copytree(teachers_dir, tmp_path, dirs_exist_ok=True)
  digits_config.stage = "teachers"
  before = _tree_digest(tmp_path / "teachers")
  digits_config.teacher_train.steps = 8  # would train further if it got that far
  mutate(digits_config)
  with pytest.raises(mlfd_main.INPUT_ERRORS, match=message.replace("(", r"\(")):
    mlfd_main.run(digits_config, str(tmp_path))
  assert _tree_digest(tmp_path / "teachers") == before


def test_missing_npz_and_bad_labels(digits_config, tmp_path):
  digits_config.stage = "teachers"
  block = digits_config.datasets.digits_a
  missing = tmp_path / "nope.npz"
  digits_config.datasets.digits_a = dict(source="npz", path=str(missing), image_size=16)
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    mlfd_main.run(digits_config, str(tmp_path / "w"))
  bad = tmp_path / "bad.npz"
  x = np.zeros((20, 8, 8, 1), np.uint8)
  y = np.array([0, 1] * 9 + [0, 7], np.int32)
  np.savez(bad, x_train=x, y_train=y, x_test=x, y_test=y)
  digits_config.datasets.digits_a = dict(source="npz", path=str(bad), image_size=16,
                                         num_classes=2)
  with pytest.raises(ValueError, match="bad.npz"):
    mlfd_main.run(digits_config, str(tmp_path / "w"))
  del block


def test_unwritable_workdir(digits_config, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(PermissionError, match="not writable"):
    mlfd_main.run(digits_config, str(blocker / "sub"))


ENTRY_ERRORS = [
    (["--config.stage=nope"],
     "unknown stage 'nope'; valid: all, baseline_joint, check, eval, joint, students, teachers"),
    (["--config.teacher_train.stpes=3"],
     "unknown config key 'teacher_train.stpes' (--config.teacher_train.stpes); closest: "
     "teacher_train.steps, teacher_train.dtype, teacher_train.epochs"),
    (["--config.no_such_key=1"],
     "unknown config key 'no_such_key' (--config.no_such_key); keys: datasets, distill, "
     "fsdp_size, joint, joint_train, num_devices, seed, sharding, stage, student_datasets, student_train, "
     "students, teacher_datasets, teacher_train, teachers"),
    (["--config.seed=abc"], "--config.seed=abc: seed is an int; got 'abc'"),
    (["--config.joint.width=wide"], "--config.joint.width=wide: joint.width is an int; got 'wide'"),
    (["--config.joint.finetune_teachers=maybe"],
     "--config.joint.finetune_teachers=maybe: joint.finetune_teachers is a bool; got 'maybe'"),
    (["--config.joint=3"], "--config.joint is a block, not a value; set one of its keys: "
     "joint.dropout, joint.finetune_teachers, joint.fusion_level, joint.mode, "
     "joint.precompute_teachers, joint.shape_like, joint.width"),
    (["--wrkdir=x"],
     "unknown flag --wrkdir; valid: --config, --workdir, --distributed, --coordinator_address, "
     "--num_processes, --process_id, --distributed_timeout, --config.KEY=VALUE"),
    (["extra"], "unexpected argument 'extra'; the command takes only flags: "
     "--config=FILE[:ARGS] --workdir=DIR [--config.KEY=VALUE ...]"),
]


@pytest.mark.parametrize("extra,error", ENTRY_ERRORS)
def test_entry_error_is_one_line(tmp_path, extra, error):
  """The whole stderr is one line naming the bad flag, key or value; nothing is written."""
  r = _cli("--config=configs/digits.py:tiny", f"--workdir={tmp_path / 'w'}", *extra)
  assert (r.returncode, r.stderr) == (2, f"mlfd_jax: error: {error}\n")
  assert not (tmp_path / "w").exists()


def test_config_file_and_required_flags_errors_are_one_line(tmp_path):
  configs = ", ".join(f"configs/{n}.py" for n in ("cifar10_same", "digits", "imagenet_subsets",
                                                  "paper_group_a", "shared_trio",
                                                  "tiny_imagenet_subsets"))
  broken = tmp_path / "broken.py"
  broken.write_text("import no_such_module\n")
  cases = [
      (["--config=configs/nope.py", f"--workdir={tmp_path}"],
       f"config file 'configs/nope.py' does not exist; available: {configs}"),
      ([f"--config={broken}", f"--workdir={tmp_path}"],
       f"config file '{broken}' does not import: ModuleNotFoundError: No module named "
       "'no_such_module'"),
      (["--config=configs/digits.py:huge", f"--workdir={tmp_path}"],
       "--config=configs/digits.py:huge: unknown variant 'huge'; valid: default, tiny"),
      (["--config=configs/tiny_imagenet_subsets.py:budget=2x", f"--workdir={tmp_path}"],
       "--config=configs/tiny_imagenet_subsets.py:budget=2x: budget is a float; got '2x'"),
      (["--config=configs/tiny_imagenet_subsets.py:tiny,k=2.5", f"--workdir={tmp_path}"],
       "--config=configs/tiny_imagenet_subsets.py:tiny,k=2.5: k is an int; got '2.5'"),
      ([f"--workdir={tmp_path}"], "--config is required (e.g. --config=configs/digits.py)"),
      (["--config=configs/digits.py:tiny"], "--workdir is required (e.g. --workdir=runs/digits)"),
  ]
  for args, error in cases:
    r = _cli(*args)
    assert (r.returncode, r.stderr) == (2, f"mlfd_jax: error: {error}\n"), args


@pytest.mark.parametrize("key,value,error", [
    ("distill.method", "nope", "unknown distillation method 'nope'; valid: amtml, avg_kd, feed, "
     "feed_seq, kd, mlfd, mlfd_last"),
    ("distill.levels", "stage9", "distill.levels has 'stage9', which the joint teacher does not "
     "emit; it has: stage2, stage3, stage4, pooled"),
    ("joint.mode", "each", "unknown joint.mode 'each'; valid: all, per_dataset"),
])
def test_all_checks_every_stage_before_training_any(tmp_path, key, value, error):
  """`stage=all` fails on a bad later-stage value before stage 1 trains anything."""
  r = _cli("--config=configs/digits.py:tiny", f"--workdir={tmp_path}", f"--config.{key}={value}")
  assert (r.returncode, r.stderr) == (
      2, f"mlfd_jax: error: {error} (MLFD_TRACEBACK=1 shows where)\n")
  assert not (tmp_path / "teachers").exists()


def test_compute_core_imports_neither_tensorflow_nor_tensorboard():
  code = ("import sys; import mlfd_jax.models, mlfd_jax.train, mlfd_jax.parallel, "
          "mlfd_jax.checkpoint, mlfd_jax.distill.losses, mlfd_jax.modelfn, mlfd_jax.optim; "
          "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'clu', "
          "'tensorflow_datasets', 'tensorboard')]; print(bad); sys.exit(1 if bad else 0)")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 0, r.stdout + r.stderr


def test_a_second_run_on_a_busy_workdir_fails_at_once_and_the_first_is_unharmed(tmp_path):
  """One run per workdir: the second gets one line naming the holder; the first trains on.
  (test_resume.py shows that a killed run's lock does not block the rerun.)"""
  import re
  import socket
  args = ["--config=configs/digits.py:tiny", f"--workdir={tmp_path}", "--config.stage=teachers",
          "--config.teacher_train.steps=400", "--config.teacher_train.batch_size=16"]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  first = subprocess.Popen([sys.executable, "-m", "mlfd_jax.main", *args], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / ".lock").exists():
      time.sleep(0.1)
    r = _cli(*args)
    assert r.returncode == 2
    assert re.fullmatch(
        rf"mlfd_jax: error: workdir {tmp_path} is in use by another run \(pid {first.pid} on "
        rf"{re.escape(socket.gethostname())} since [-0-9]+ [:0-9]+\); wait for it to end or use "
        rf"another --workdir \(MLFD_TRACEBACK=1 shows where\)\n", r.stderr), r.stderr
    assert first.poll() is None  # still training
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == first.pid
  finally:
    first.kill()
    first.wait()


def _final_teacher_params(workdir, name, steps):
  from configs import digits
  from mlfd_jax import checkpoint, parallel, train
  from mlfd_jax.stages import teachers
  from mlfd_jax.stages.context import RunContext
  ctx = RunContext(digits.get_config("tiny"), "")
  ck = checkpoint.Checkpoints(str(workdir / "teachers" / name), read_only=True)
  model = train.restore_model(ck, teachers.teacher_task(ctx, name), parallel.make_mesh(1), steps)
  ck.close()
  return [np.asarray(x) for x in jax.tree.leaves(model)]


def test_sigterm_saves_the_current_step_and_the_rerun_ends_bitwise_as_an_uninterrupted_run(
    tmp_path):
  import re
  # One teacher: the other two would only repeat what it shows, at twice its cost.
  args = ["--config=configs/digits.py:tiny", "--config.stage=teachers",
          "--config.teacher_datasets=digits_a", "--config.teacher_train.steps=60",
          "--config.teacher_train.eval_every=20", "--config.teacher_train.log_every=1",
          "--config.teacher_train.batch_size=16"]
  stopped, whole = tmp_path / "stopped", tmp_path / "whole"
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  proc = subprocess.Popen([sys.executable, "-m", "mlfd_jax.main", *args, f"--workdir={stopped}"],
                          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  ckdir = stopped / "teachers" / "digits_a"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if ckdir.is_dir() and any(p.name.isdigit() for p in ckdir.iterdir()):
      break
    time.sleep(0.05)
  assert proc.poll() is None, "finished before the signal; raise steps"
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM
  m = re.fullmatch(r"mlfd_jax: stopped by SIGTERM at step (\d+)/60 of teacher/(digits_a): its "
                   r"state is saved; rerun the same command to continue\n", err)  # all of stderr
  assert m, err
  step, name = int(m.group(1)), m.group(2)
  assert 0 < step < 60 and (stopped / "teachers" / name / str(step)).is_dir()
  assert "Traceback" not in err
  assert not (stopped / "results.json").exists()  # nothing was finished, so nothing recorded

  r = _cli(*args, f"--workdir={stopped}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"resuming at step {step}/60" in r.stdout  # the log; stderr keeps warnings and errors
  r = _cli(*args, f"--workdir={whole}")
  assert r.returncode == 0, r.stderr[-3000:]
  a, b = (_final_teacher_params(w, name, 60) for w in (stopped, whole))
  assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))

  def numbers(path):
    res = json.loads((path / "results.json").read_text())
    return {d: {k: (v["test_top1"], v["val_top1"], v["step"]) for k, v in e.items()
                if isinstance(v, dict)} for d, e in res["datasets"].items()}
  assert numbers(stopped) == numbers(whole)


def test_a_diverging_run_stops_with_one_line_and_saves_nothing_after_it(tmp_path):
  import re
  r = _cli("--config=configs/digits.py:tiny", f"--workdir={tmp_path}", "--config.stage=teachers",
           "--config.teacher_train.optimizer.lr=1e12", "--config.teacher_train.steps=40",
           "--config.teacher_train.eval_every=2", "--config.teacher_train.log_every=1")
  assert r.returncode == 2
  m = re.fullmatch(r"mlfd_jax: error: \[teacher/digits_a\] step (\d+): training went non-finite "
                   r"\((\w+=(nan|inf|-inf)(, )?)+\); nothing from that step on is saved; lower "
                   r"the learning rate or check the data \(MLFD_TRACEBACK=1 shows where\)\n",
                   r.stderr)  # the whole of stderr: the log went to stdout
  assert m, r.stderr
  saved = [int(p.name) for p in (tmp_path / "teachers" / "digits_a").iterdir() if p.name.isdigit()]
  assert all(s < int(m.group(1)) for s in saved)
  assert "Traceback" not in r.stderr and not (tmp_path / "results.json").exists()


def test_a_damaged_latest_step_is_set_aside_and_the_run_resumes_from_the_previous(tmp_path):
  args = ["--config=configs/digits.py:tiny", f"--workdir={tmp_path}", "--config.stage=teachers",
          "--config.teacher_train.eval_every=2"]
  assert _cli(*args, "--config.teacher_train.steps=6").returncode == 0
  step6 = tmp_path / "teachers" / "digits_a" / "6"
  files = sorted(p.relative_to(step6) for p in step6.rglob("*") if p.is_file())
  damaged = sorted(p for p in (step6 / "model").rglob("*") if p.is_file() and p.parent.name == "d")
  assert damaged
  for p in damaged:  # truncate the array data of the latest step's model
    p.write_bytes(b"")
  r = _cli(*args, "--config.teacher_train.steps=8")
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"checkpoint step 6 in {step6.parent} does not restore" in r.stderr
  assert "[teacher/digits_a] resuming at step 4/8" in r.stdout
  kept = tmp_path / "teachers" / "digits_a.damaged" / "6"  # set aside whole, not deleted
  assert sorted(p.relative_to(kept) for p in kept.rglob("*") if p.is_file()) == files
  assert (step6.parent / "8").is_dir()


def test_overrides_may_come_before_the_config_file(tmp_path):
  """ml_collections wants --config first; the command takes the flags in any order."""
  r = _cli("--config.stage=teachers", "--config.teacher_train.steps=1",
           "--config=configs/digits.py:tiny", f"--workdir={tmp_path}")
  assert r.returncode == 0, r.stderr[-2000:]
  steps = sorted(int(p.name) for p in (tmp_path / "teachers" / "digits_a").iterdir()
                 if p.name.isdigit())
  assert steps == [1]  # the override applied: the tiny config trains 4 steps
  # results.json says which overrides made each model, in the order given.
  res = json.loads((tmp_path / "results.json").read_text())
  assert res["config"] == "configs/digits.py:tiny"
  assert [e["teacher"]["overrides"] for e in res["datasets"].values()] == 3 * [
      ["--config.stage=teachers", "--config.teacher_train.steps=1"]]
  # Teachers copied into another workdir and only evaluated there are quoted with the command
  # that trained them, not the evaluating one.
  other = tmp_path / "other"
  shutil.copytree(tmp_path / "teachers", other / "teachers")
  r = _cli("--config=configs/digits.py:tiny", f"--workdir={other}", "--config.seed=3",
           "--config.stage=teachers", "--config.teacher_train.steps=1")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "[teachers/digits_a] finished (step 1): skipping training" in r.stdout
  res = json.loads((other / "results.json").read_text())
  assert [e["teacher"]["overrides"] for e in res["datasets"].values()] == 3 * [
      ["--config.stage=teachers", "--config.teacher_train.steps=1"]]
  assert all("config" not in e["teacher"] for e in res["datasets"].values())  # same file


def test_check_and_all_log_the_plan_with_what_is_left(tmp_path):
  """Before training, `all` (and `check`) logs each model it would train, how far it already is
  and the steps left: here one teacher of three is trained, one half trained, one not started."""
  base = ["--config=configs/digits.py:tiny", f"--workdir={tmp_path}"]
  for name, steps in (("digits_a", 4), ("digits_b", 2)):
    r = _cli(*base, "--config.stage=teachers", f"--config.teacher_datasets={name}",
             f"--config.teacher_train.steps={steps}")
    assert r.returncode == 0, r.stderr[-2000:]
  r = _cli(*base, "--config.stage=check")
  assert r.returncode == 0, r.stderr[-2000:]
  plan = [line.split("] ", 1)[1] for line in r.stdout.splitlines() if "] plan: " in line]
  assert plan == [
      "plan: teachers/digits_a, 4 steps (finished)",
      "plan: teachers/digits_b, 4 steps (resumes at step 2)",
      "plan: teachers/digits_c, 4 steps (to train)",
      "plan: joint/joint, 4 steps (to train)",
      "plan: students/digits_a, 4 steps (to train)",
      "plan: students/digits_b, 4 steps (to train)",
      "plan: students/digits_c, 4 steps (to train)",
      "plan: 7 models, 22 of their 28 steps left to train"], r.stdout[-3000:]


def test_the_log_starts_with_the_runs_platform_not_a_missing_tpu_library(tmp_path):
  """Left to pick its platform (no JAX_PLATFORMS, as the README's commands run), JAX first tries
  a TPU and logs that libtpu.so cannot be opened: on a CPU or GPU host the log's first line
  would be that alarm. The run's own first line says which platform it uses instead."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  r = subprocess.run([sys.executable, "-m", "mlfd_jax.main", "--config=configs/digits.py:tiny",
                      f"--workdir={tmp_path}", "--config.stage=check"], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  first = r.stdout.splitlines()[0]
  assert first.split("] ", 1)[1] == "JAX process 0/1, 2 local / 2 global devices (cpu)", first
  assert "libtpu" not in r.stdout and r.stderr == "", r.stderr
