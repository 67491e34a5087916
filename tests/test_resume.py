"""Exact resume of `stage=all` and of the students that learn from its joint teacher: killed
with SIGKILL at several points (inside each stage, between stages, while a checkpoint is being
written; inside a kd student), then rerun with the same command, they end with the
same parameters, bit for bit, and the same results.json numbers as runs never killed. The
teacher-sourced students and the joint baseline are in test_resume_teacher_sourced.py."""

import subprocess

from resume_util import (ENV, ROOT, STEPS, assert_same, command, kill_inside_then_rerun,
                         kill_when, run_ok, saving, steps)

# Each point: (what it is, predicate on the workdir) -- the run is killed as soon as it holds.
POINTS = [
    ("inside the teachers stage", lambda w: bool(steps(w / "teachers" / "digits_b"))),
    ("between teachers and joint", lambda w: STEPS in steps(w / "teachers" / "digits_c")),
    ("while the joint teacher saves", lambda w: saving(w / "joint")),
    ("inside the students stage", lambda w: bool(steps(w / "students" / "digits_a"))),
]
# Students of the joint teacher trained outside `stage=all`: one method and one dataset are
# enough (every joint-sourced method resumes through the same Trainer; mlfd_last differs from
# kd only in its loss).
JOINT_SOURCED = [(f"students_{m}/digits_a", ["--config.stage=students",
                                             f"--config.distill.method={m}",
                                             "--config.student_datasets=digits_a"])
                 for m in ("kd",)]


def test_kill_9_anywhere_in_stage_all_and_in_joint_sourced_students_then_rerun_is_exact(
    tmp_path):
  whole, killed = tmp_path / "whole", tmp_path / "killed"
  r = subprocess.run(command(whole), cwd=ROOT, env=ENV, capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  landed = [what for what, predicate in POINTS if kill_when(killed, predicate)]
  # The save window is short; every other point must be hit.
  assert set(landed) >= {"inside the teachers stage", "between teachers and joint",
                         "inside the students stage"}, landed
  run_ok(killed)
  for directory, flags in JOINT_SOURCED:
    run_ok(whole, *flags)
    kill_inside_then_rerun(killed, directory, *flags)
  assert_same(killed, whole, [
      *(f"teachers/digits_{x}" for x in "abc"), "joint/joint",
      *(f"students/digits_{x}" for x in "abc"), *(d for d, _ in JOINT_SOURCED)])
