"""What the kill -9 tests share: the command, killing it at a point, and comparing workdirs.

A run killed with SIGKILL and rerun with the same command must end with the same parameters,
bit for bit, and the same results.json numbers as a run that was never killed.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 8  # per model: enough that each model is still training when its kill point is seen
ARGS = ["--config=configs/digits.py:tiny", f"--config.teacher_train.steps={STEPS}",
        f"--config.joint_train.steps={STEPS}", f"--config.student_train.steps={STEPS}"]
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def command(workdir, *extra):
  return [sys.executable, "-m", "mlfd_jax.main", *ARGS, f"--workdir={workdir}", *extra]


def run_ok(workdir, *extra):
  r = subprocess.run(command(workdir, *extra), cwd=ROOT, env=ENV, capture_output=True,
                     text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]


def steps(d: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def saving(root: pathlib.Path) -> bool:
  return any(p.name.endswith(".orbax-checkpoint-tmp") for p in root.rglob("*")) if root.is_dir() \
      else False


def kill_when(workdir, predicate, *extra, timeout=600) -> bool:
  """Starts the command, SIGKILLs it once `predicate(workdir)` holds; False if it ended first."""
  proc = subprocess.Popen(command(workdir, *extra), cwd=ROOT, env=ENV,
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


def kill_inside_then_rerun(killed, directory, *flags):
  """Kills the command as soon as `directory` (relative to the workdir) holds a step, checks
  the model was cut short, and reruns it to the end."""
  assert kill_when(killed, lambda w: bool(steps(w / directory)), *flags), directory
  assert max(steps(killed / directory)) < STEPS, f"{directory} was not cut short"
  run_ok(killed, *flags)


def latest_models(workdir: pathlib.Path) -> dict[str, list[np.ndarray]]:
  """The `model` item of every checkpoint directory's latest step, restored with plain orbax."""
  out = {}
  for cfg in sorted(workdir.rglob("config.json")):
    directory = cfg.parent
    if not steps(directory):
      continue
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    step = mngr.latest_step()
    model = mngr.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore()))["model"]
    out[f"{directory.relative_to(workdir)}@{step}"] = [
        np.asarray(x) for x in jax.tree.leaves(model)]
    mngr.close()
  return out


def numbers(workdir):
  res = json.loads((workdir / "results.json").read_text())
  return {d: {k: (v["test_top1"], v["val_top1"], v["step"], v["last"]["test_top1"])
              for k, v in e.items() if isinstance(v, dict)} for d, e in res["datasets"].items()}


def assert_same(killed, whole, expected_models: list[str]):
  """Both workdirs hold exactly `expected_models` (checkpoint directories), each finished and
  bitwise equal, and the same results.json numbers."""
  a, b = latest_models(killed), latest_models(whole)
  assert sorted(a) == sorted(b) == sorted(f"{m}@{STEPS}" for m in expected_models), sorted(a)
  for name in a:
    assert all(np.array_equal(x, y) for x, y in zip(a[name], b[name])), name
  assert numbers(killed) == numbers(whole)
