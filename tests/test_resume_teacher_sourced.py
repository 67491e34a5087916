"""Exact resume of the models that learn from the stage-1 teachers alone: the joint baseline and
the amtml and feed_seq students, each killed with SIGKILL inside its training (feed_seq inside
its second generation, a feed student with trained adaptors that learns from the first), then
rerun, end with the same parameters, bit for bit, and the same results.json numbers as runs
never killed. avg_kd's student has no state beyond the model and optimizer, as kd's (resumed in
test_resume.py); plain feed is feed_seq's first generation."""

import shutil

from resume_util import assert_same, kill_inside_then_rerun, run_ok

STUDENT = ["--config.stage=students", "--config.student_datasets=digits_a"]
# (the checkpoint directory to kill inside, the flags that train it)
EXTRA = [
    ("baseline_joint/joint", ["--config.stage=baseline_joint"]),
    ("students_amtml/digits_a", [*STUDENT, "--config.distill.method=amtml"]),
    ("students_feed_seq/gen1/digits_a", [*STUDENT, "--config.distill.method=feed_seq"]),
]


def test_kill_9_inside_the_joint_baseline_and_teacher_sourced_students_then_rerun_is_exact(
    tmp_path):
  whole, killed = tmp_path / "whole", tmp_path / "killed"
  run_ok(whole, "--config.stage=teachers")
  shutil.copytree(whole, killed)  # the same finished teachers on both sides
  for directory, flags in EXTRA:
    run_ok(whole, *flags)
    kill_inside_then_rerun(killed, directory, *flags)
  assert_same(killed, whole, [
      *(f"teachers/digits_{x}" for x in "abc"), *(d for d, _ in EXTRA),
      "students_feed_seq/gen0/digits_a"])
