"""The budget report on hand-made results.json files, and its command line on a bad argument."""

import json
import subprocess
import sys

from mlfd_jax import budgets


def _run(path, seed, teacher, student):
  path.mkdir(parents=True)
  entry = lambda v: {"val_top1": v, "test_top1": v, "test_top5": 1.0}
  (path / "results.json").write_text(json.dumps({"config": "c.py", "seed": seed, "datasets": {
      "a": {"num_classes": 10, "teacher": entry(teacher),
            "student": {**entry(student), "method": "mlfd", "levels": "all"}}}}))
  return str(path)


def test_values_and_paired_differences_per_budget(tmp_path):
  specs = [f"600={_run(tmp_path / 'b1s0', 0, 0.50, 0.45)}",
           f"600={_run(tmp_path / 'b1s1', 1, 0.54, 0.47)}",
           f"1200={_run(tmp_path / 'b2s0', 0, 0.60, 0.62)}"]
  files = budgets.write(specs, str(tmp_path / "out"), ("individual", "mlfd"), "individual")
  md = open(files["md"]).read()
  # individual at 600 steps: mean 52, sample std of (50, 54) = 2.83; each seed beside it
  assert "| a | individual | 600 | 52.00 ± 2.83 (n=2) | 50.00 | 54.00 |" in md
  assert "| a | mlfd | 1200 | 62.00 (n=1) | 62.00 | — |" in md
  # paired: seed 0 -5, seed 1 -7 at 600 steps; +2 at 1200
  assert "| a | mlfd − individual | 600 | -6.00 ± 1.41 (0 of 2 > 0) | -5.00 | -7.00 |" in md
  assert "| a | mlfd − individual | 1200 | +2.00 (1 of 1 > 0) | +2.00 | — |" in md
  assert open(files["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_change_of_the_difference_between_budgets_is_paired_by_seed(tmp_path):
  def run(name, seed, a, b):  # a, b: (teacher, student) on datasets a and b
    path = tmp_path / name
    path.mkdir()
    entry = lambda v: {"val_top1": v, "test_top1": v, "test_top5": 1.0}
    (path / "results.json").write_text(json.dumps({"config": "c.py", "seed": seed, "datasets": {
        name: {"num_classes": 10, "teacher": entry(t),
               "student": {**entry(st), "method": "mlfd", "levels": "all"}}
        for name, (t, st) in (("a", a), ("b", b))}}))
    return str(path)
  # mlfd - individual: seed 0 a +2 -> +1, b +4 -> +1 (changes -1, -3: mean -2);
  # seed 1 a +1 -> +1, b +0 -> +2 (changes 0, +2: mean +1); seed 2 only at 2400: no change.
  specs = [f"2400={run('s0', 0, (.50, .52), (.60, .64))}",
           f"2400={run('s1', 1, (.50, .51), (.60, .60))}",
           f"2400={run('s2', 2, (.50, .55), (.60, .65))}",
           f"4800={run('l0', 0, (.60, .61), (.70, .71))}",
           f"4800={run('l1', 1, (.60, .61), (.70, .72))}"]
  md = open(budgets.write(specs, str(tmp_path / "out"), ("individual", "mlfd"),
                          "individual")["md"]).read()
  change = md.split("## Change of each difference")[1]
  assert ("| a | mlfd − individual | 2400 → 4800 | -0.50 ± 0.71 (0 of 2 > 0) | "
          "-1.00 | +0.00 | — |") in change
  assert ("| b | mlfd − individual | 2400 → 4800 | -0.50 ± 3.54 (1 of 2 > 0) | "
          "-3.00 | +2.00 | — |") in change
  # pooled: seed means -2 and +1: mean -0.5, se 1.5, t = -0.3 on 1 df
  assert ("| mlfd − individual | 2400 → 4800 | seed0 -2.00, seed1 +1.00 | "
          "-0.50 ± 1.50, t = -0.3 (1) |") in change


def test_bad_argument_is_one_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "mlfd_jax.budgets", "runs/x", "--out",
                         str(tmp_path / "out")], capture_output=True, text=True)
  assert proc.returncode == 2
  assert proc.stderr == ("mlfd_jax.budgets: error: argument 'runs/x' is not STEPS=WORKDIR "
                         "(e.g. 600=runs/tin/seed0)\n")
  assert not (tmp_path / "out").exists()


def test_a_model_no_run_has_is_one_line_and_writes_nothing(tmp_path):
  """A misspelt --models or --base used to give an empty table and exit 0."""
  spec = f"600={_run(tmp_path / 'b1s0', 0, 0.50, 0.45)}"
  for flag in (["--models", "individual,mlfd,kdd"], ["--base", "kdd"]):
    proc = subprocess.run([sys.executable, "-m", "mlfd_jax.budgets", spec, "--out",
                           str(tmp_path / "out"), *flag], capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (2, (
        "mlfd_jax.budgets: error: no run has a model 'kdd' (--models, --base); they have: "
        "individual, mlfd\n")), flag
  assert not (tmp_path / "out").exists()


def test_seeds_are_ordered_by_number_not_as_text(tmp_path):
  """Seed 10's column comes after seed 2's, in the tables and the pooled per-seed list."""
  specs = [f"{steps}={_run(tmp_path / f'b{steps}s{seed}', seed, 0.50, 0.50 + seed / 100)}"
           for steps in (600, 1200) for seed in (10, 2)]
  md = open(budgets.write(specs, str(tmp_path / "out"), ("individual", "mlfd"),
                          "individual")["md"]).read()
  assert "| dataset | model | steps | mean ± std | seed2 | seed10 |" in md
  assert "| a | mlfd − individual | 600 | +6.00 ± 5.66 (2 of 2 > 0) | +2.00 | +10.00 |" in md
  assert "| mlfd − individual | 600 → 1200 | seed2 +0.00, seed10 +0.00 |" in md
