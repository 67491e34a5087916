"""Exact resume: `stage=all` killed with SIGKILL at several points (inside each stage, between
stages, while a checkpoint is being written), and the joint baseline and the teacher-sourced
methods' students (amtml, avg_kd, feed) killed inside their training, then rerun with the same command, end with the
same parameters, bit for bit, and the same results.json numbers as a run that was never killed."""

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
import orbax.checkpoint as ocp

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Enough steps per model that each stage is still running when its kill point is seen.
ARGS = ["--config=configs/digits.py:tiny", "--config.teacher_train.steps=12",
        "--config.joint_train.steps=12", "--config.student_train.steps=12"]
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def _command(workdir, *extra):
  return [sys.executable, "-m", "mlfd_jax.main", *ARGS, f"--workdir={workdir}", *extra]


def _steps(d: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _saving(root: pathlib.Path) -> bool:
  return any(p.name.endswith(".orbax-checkpoint-tmp") for p in root.rglob("*")) if root.is_dir() \
      else False


# Each point: (what it is, predicate on the workdir) -- the run is killed as soon as it holds.
POINTS = [
    ("inside the teachers stage", lambda w: bool(_steps(w / "teachers" / "digits_b"))),
    ("between teachers and joint", lambda w: 12 in _steps(w / "teachers" / "digits_c")),
    ("while the joint teacher saves", lambda w: _saving(w / "joint")),
    ("inside the students stage", lambda w: bool(_steps(w / "students" / "digits_a"))),
]


def _kill_when(workdir, predicate, *extra, timeout=600) -> bool:
  """Starts the command, SIGKILLs it once `predicate(workdir)` holds; False if it ended first."""
  proc = subprocess.Popen(_command(workdir, *extra), cwd=ROOT, env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  try:
    while proc.poll() is None and time.time() < deadline:
      if predicate(workdir):
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True
      time.sleep(0.005)
    return False
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def _latest_models(workdir: pathlib.Path) -> dict[str, list[np.ndarray]]:
  """The `model` item of every checkpoint directory's latest step, restored with plain orbax."""
  out = {}
  for cfg in sorted(workdir.glob("*/*/config.json")):
    directory = cfg.parent
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    step = mngr.latest_step()
    model = mngr.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore()))["model"]
    out[f"{directory.relative_to(workdir)}@{step}"] = [
        np.asarray(x) for x in jax.tree.leaves(model)]
    mngr.close()
  return out


def _numbers(workdir):
  res = json.loads((workdir / "results.json").read_text())
  return {d: {k: (v["test_top1"], v["val_top1"], v["step"], v["last"]["test_top1"])
              for k, v in e.items() if isinstance(v, dict)} for d, e in res["datasets"].items()}


def test_kill_9_anywhere_in_stage_all_then_rerun_equals_an_uninterrupted_run(tmp_path):
  whole, killed = tmp_path / "whole", tmp_path / "killed"
  r = subprocess.run(_command(whole), cwd=ROOT, env=ENV, capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  landed = [what for what, predicate in POINTS if _kill_when(killed, predicate)]
  # The save window is short; every other point must be hit.
  assert set(landed) >= {"inside the teachers stage", "between teachers and joint",
                         "inside the students stage"}, landed
  r = subprocess.run(_command(killed), cwd=ROOT, env=ENV, capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  a, b = _latest_models(killed), _latest_models(whole)
  assert sorted(a) == sorted(b) and len(a) == 7  # 3 teachers, the joint teacher, 3 students
  for name in a:
    assert all(np.array_equal(x, y) for x, y in zip(a[name], b[name])), name
  assert _numbers(killed) == _numbers(whole)


# Models trained outside `stage=all`: (their checkpoint directory, the flags that train them).
EXTRA = [
    ("baseline_joint/joint", ["--config.stage=baseline_joint"]),
    *((f"students_{method}/digits_a", ["--config.stage=students",
                                        f"--config.distill.method={method}",
                                        "--config.student_datasets=digits_a"])
      for method in ("amtml", "avg_kd", "feed")),  # feed's students carry trained adaptors
]


def _run_ok(workdir, *extra):
  r = subprocess.run(_command(workdir, *extra), cwd=ROOT, env=ENV, capture_output=True,
                     text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]


def test_kill_9_inside_the_joint_baseline_and_teacher_sourced_students_then_rerun_is_exact(
    tmp_path):
  whole, killed = tmp_path / "whole", tmp_path / "killed"
  _run_ok(whole, "--config.stage=teachers")
  shutil.copytree(whole, killed)  # the same finished teachers on both sides
  for directory, flags in EXTRA:
    _run_ok(whole, *flags)
    assert _kill_when(killed, lambda w, d=directory: bool(_steps(w / d)), *flags), directory
    assert max(_steps(killed / directory)) < 12, f"{directory} was not cut short"
    _run_ok(killed, *flags)
  a, b = _latest_models(killed), _latest_models(whole)
  assert sorted(a) == sorted(b) and len(a) == 7  # 3 teachers, the baseline, 3 students
  for name in a:
    assert all(np.array_equal(x, y) for x, y in zip(a[name], b[name])), name
  assert _numbers(killed) == _numbers(whole)
