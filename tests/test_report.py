"""The results report on hand-made results.json files."""

import json
import subprocess
import sys

import pytest

from mlfd_jax import report


def _entry(test, last=None):
  return {"val_top1": test, "test_top1": test, "test_top5": 1.0, "step": 10,
          "last": {"val_top1": last or test, "test_top1": last or test, "test_top5": 1.0,
                   "step": 20}}


def _write(path, seed, datasets):
  path.mkdir(parents=True)
  (path / "results.json").write_text(json.dumps({"config": "c.py", "seed": seed,
                                                 "datasets": datasets}))
  return str(path)


@pytest.fixture
def runs(tmp_path):
  a = _write(tmp_path / "s0", 0, {
      "mnist": {"num_classes": 10, "teacher": _entry(0.90, 0.80),
                "student": {**_entry(0.95), "method": "mlfd", "levels": "all"}},
      "cifar": {"num_classes": 10, "teacher": _entry(0.50)}})
  b = _write(tmp_path / "s1", 1, {
      "mnist": {"num_classes": 10, "teacher": _entry(0.94, 0.82),
                "student": {**_entry(0.97), "method": "mlfd", "levels": "all"}},
      "cifar": {"num_classes": 10, "teacher": _entry(0.54)}})
  return [a, b]


def test_mean_std_and_missing_methods(runs, tmp_path):
  files = report.write_report(runs, str(tmp_path / "out"))
  md = open(files["md"]).read()
  # mnist individual: mean 92, sample std of (90, 94) = 2.83
  assert "| mnist | 92.00 ± 2.83 (n=2) | 96.00 ± 1.41 (n=2) |" in md
  # cifar has no student: shown as missing, not zero
  assert "| cifar | 52.00 ± 2.83 (n=2) | — |" in md
  assert "0.00 ± 0.00" not in md
  # the last-checkpoint table uses the `last` numbers
  last = md.split("### Last checkpoint")[1]
  assert "| mnist | 81.00 ± 1.41 (n=2) |" in last
  assert open(files["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_method_labels():
  assert report.method_label("teacher", {}) == "individual"
  assert report.method_label("student", {"method": "mlfd", "levels": "stage4"}) == \
      "mlfd[stage4]"
  assert report.method_label("student", {"method": "mlfd", "levels": "all"}) == "mlfd"
  # a student run's column is its run name, also for results from before names were stored
  assert report.method_label("student_kd", {"method": "kd", "levels": "all", "name": "kd"}) \
      == "kd"
  assert report.method_label("student_mlfd_last", {}) == "mlfd_last"
  assert report.method_label("student_s34", {"method": "mlfd", "name": "s34"}) == "s34"
  assert report.method_label("baseline_joint", {}) == "baseline_joint"


def test_cli_missing_file_is_one_line(tmp_path, capsys):
  assert report.main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "nope" in err


def test_grouped_runs_get_their_own_columns(runs, tmp_path):
  a, b = runs
  table = report.collect(report.load_runs([a, f"ft={b}"]))
  assert table["mnist"]["individual"] == [0.90] and table["mnist"]["ft:individual"] == [0.94]
  assert table["mnist"]["ft:mlfd"] == [0.97]


def test_a_single_run_shows_no_spread(runs, tmp_path):
  md = open(report.write_report(runs[:1], str(tmp_path / "one"))["md"]).read()
  assert "| mnist | 90.00 (n=1) | 95.00 (n=1) |" in md and "±  " not in md


def test_per_run_values_and_paired_differences(runs, tmp_path):
  md = open(report.write_report(runs, str(tmp_path / "out"))["md"]).read()
  per_run = md.split("### Per run")[1].split("### Paired")[0]
  assert "| dataset | method | mean ± std | seed0 | seed1 |" in per_run
  assert "| mnist | individual | 92.00 ± 2.83 | 90.00 | 94.00 |" in per_run
  assert "| cifar | individual | 52.00 ± 2.83 | 50.00 | 54.00 |" in per_run
  paired = md.split("### Paired")[1]
  # mlfd - individual per seed: +5 and +3 points; cifar has no student, so no row.
  assert "| mnist | mlfd | +4.00 ± 1.41 (2/2 > 0) | +5.00 | +3.00 |" in paired
  assert "| cifar |" not in paired


def test_ablation_groups_pair_with_the_baseline_runs_individual(runs, tmp_path):
  abl = _write(tmp_path / "abl_s0", 0, {
      "mnist": {"num_classes": 10, "teacher": _entry(0.90),
                "student": {**_entry(0.99), "method": "mlfd", "levels": "all"}}})
  md = open(report.write_report([*runs, f"abl={abl}"], str(tmp_path / "out"))["md"]).read()
  per_run = md.split("### Per run")[1].split("### Paired")[0]
  # The group's models are their own rows, never pooled with the baseline's.
  assert "| mnist | abl:mlfd | 99.00 | 99.00 | — |" in per_run
  assert "| mnist | mlfd | 96.00 ± 1.41 | 95.00 | 97.00 |" in per_run
  paired = md.split("### Paired")[1]
  assert "| mnist | abl:mlfd | +9.00 (1/1 > 0) | +9.00 | — |" in paired


def test_each_column_names_the_command_that_made_it(tmp_path):
  stage4 = ["--config.seed=1", "--config.joint.fusion_level=stage4"]
  run = _write(tmp_path / "s1", 1, {
      name: {"num_classes": 10,
             # trained by a command with another config file (teachers copied in)
             "teacher": {**_entry(0.9), "overrides": ["--config.seed=1"], "config": "t.py"},
             "student": {**_entry(0.9), "method": "kd", "name": "kd",
                         "overrides": [*stage4, "--config.distill.method=kd"]},
             "joint_teacher": _entry(0.9)}  # written before overrides were recorded
      for name in ("mnist", "cifar")})
  files = report.write_report([run, f"abl={run}"], str(tmp_path / "out"))
  md = open(files["md"]).read().split("### How each column was made")[1]
  rows = [line for line in md.splitlines() if line.startswith("| seed1 |")]
  assert rows == [  # one row per column: both datasets share each command
      "| seed1 | individual | `--config=t.py --config.seed=1` |",
      "| seed1 | kd | `--config=c.py --config.seed=1 --config.joint.fusion_level=stage4 "
      "--config.distill.method=kd` |",
      "| seed1 | joint_teacher | (not recorded) |",
      "| seed1 | abl:individual | `--config=t.py --config.seed=1` |",
      "| seed1 | abl:kd | `--config=c.py --config.seed=1 --config.joint.fusion_level=stage4 "
      "--config.distill.method=kd` |",
      "| seed1 | abl:joint_teacher | (not recorded) |"]


def test_paired_summary_pools_pairs_and_treats_each_run_as_one_unit(tmp_path):
  def run(seed, a_teacher, a_student, b_teacher, b_student):
    return _write(tmp_path / f"s{seed}", seed, {
        "a": {"num_classes": 2, "teacher": _entry(a_teacher),
              "student": {**_entry(a_student), "method": "mlfd", "levels": "all"}},
        "b": {"num_classes": 2, "teacher": _entry(b_teacher),
              "student": {**_entry(b_student), "method": "mlfd", "levels": "all"}}})
  # mlfd - individual per pair: seed0 +4, +2 (mean +3); seed1 +0 (a tie), +2 (mean +1);
  # seed2 -2, +6 (mean +2). Run means 3, 1, 2: mean 2, se 1/sqrt(3), t = 2*sqrt(3) = 3.46.
  runs = [run(0, .50, .54, .60, .62), run(1, .50, .50, .60, .62), run(2, .50, .48, .60, .66)]
  md = open(report.write_report(runs, str(tmp_path / "out"))["md"]).read()
  best = md.split("### Paired summary over (dataset, run) pairs, best")[1].split("###")[0]
  # pairs: +4 +2 +0 +2 -2 +6, mean 2, sample std sqrt(40/5) = 2.83
  assert ("| mlfd − individual | 6 | 4 / 1 / 1 | +2.00 ± 2.83 | seed0 +3.00, seed1 +1.00, "
          "seed2 +2.00 | +2.00 ± 0.58, t = 3.5 (2) |") in best
  # an extra comparison given on the command line
  out = tmp_path / "cli"
  assert report.main([*runs, "--out", str(out), "--pair", "individual", "mlfd",
                      "--pair", "mlfd", "individual"]) == 0
  best = open(out / "results.md").read().split(
      "### Paired summary over (dataset, run) pairs, best")[1].split("###")[0]
  assert "| individual − mlfd | 6 | 1 / 1 / 4 | -2.00 ± 2.83 |" in best
  assert best.count("| mlfd − individual |") == 1  # a default comparison asked for again


def test_paired_summary_says_why_it_gives_no_t(tmp_path):
  def run(seed, student):
    return _write(tmp_path / f"s{seed}_{student}", seed, {"a": {
        "num_classes": 2, "teacher": _entry(.50),
        "student": {**_entry(student), "method": "mlfd", "levels": "all"}}})
  def row(runs):
    md = open(report.write_report(runs, str(tmp_path / f"out{len(runs)}"))["md"]).read()
    best = md.split("### Paired summary over (dataset, run) pairs, best")[1].split("###")[0]
    return [line for line in best.splitlines() if line.startswith("| mlfd − individual |")]
  # Both seeds +2: the runs' means agree exactly, so their standard error is 0 and t undefined.
  assert row([run(0, .52), run(1, .52)]) == [
      "| mlfd − individual | 2 | 2 / 0 / 0 | +2.00 ± 0.00 | seed0 +2.00, seed1 +2.00 | "
      "+2.00 ± 0.00: every run alike, no t |"]
  assert row([run(0, .54)]) == [
      "| mlfd − individual | 1 | 1 / 0 / 0 | +4.00 | seed0 +4.00 | "
      "+4.00, one run: no spread to test |"]


def _copy_with(path, run_dir, extra):
  """A copy of `run_dir`'s results.json with `extra` models added to its mnist entry: a seed's
  second workdir, copied from the first before other methods trained in it."""
  res = json.loads(open(f"{run_dir}/results.json").read())
  res["datasets"]["mnist"].update(extra)
  return _write(path, res["seed"], res["datasets"])


def test_a_seeds_workdirs_are_merged_into_one_run(runs, tmp_path):
  s0, s1 = runs
  kd = {"student_kd": {**_entry(0.93), "method": "kd", "name": "kd"}}
  s0_kd, s1_kd = _copy_with(tmp_path / "s0_kd", s0, kd), _copy_with(tmp_path / "s1_kd", s1, kd)
  md = open(report.write_report([s0, s1, s0_kd, s1_kd], str(tmp_path / "out"),
                                runs_out=str(tmp_path / "merged"))["md"]).read()
  # Each seed counts once: the teacher both of its workdirs hold is not counted twice.
  assert "| mnist | 92.00 ± 2.83 (n=2) |" in md and "2 runs" in md
  paired = md.split("### Paired")[1]
  assert "| mnist | kd | +1.00 ± 2.83 (1/2 > 0) | +3.00 | -1.00 |" in paired
  merged = json.loads((tmp_path / "merged" / "seed0.results.json").read_text())
  assert sorted(merged["datasets"]["mnist"]) == ["num_classes", "student", "student_kd",
                                                  "teacher"]
  assert merged["seed"] == 0 and "_files" not in merged
  # The merged copy reports the same as the workdirs it came from.
  again = report.write_report([str(tmp_path / "merged" / f"seed{s}.results.json")
                               for s in (0, 1)], str(tmp_path / "again"))
  assert open(again["md"]).read().split("### Best")[1] == md.split("### Best")[1]


def test_two_different_results_for_one_seeds_model_are_refused(runs, tmp_path):
  s0, _ = runs
  rerun = _copy_with(tmp_path / "rerun", s0, {"teacher": _entry(0.91)})
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, "-m", "mlfd_jax.report", s0, rerun, "--out", str(out)],
                        capture_output=True, text=True)
  assert proc.returncode == 2
  assert proc.stderr == (
      f"mlfd_jax.report: error: {rerun}/results.json and {s0}/results.json (both seed 0) hold "
      f"different mnist.teacher results; pass one of them, or tag one GROUP=PATH to compare "
      f"them\n")
  assert not out.exists()
  # Tagged, the rerun is its own column beside the first.
  md = open(report.write_report([s0, f"rerun={rerun}"], str(out))["md"]).read()
  assert "| mnist | individual | 90.00 | 90.00 |" in md
  assert "| mnist | rerun:individual | 91.00 | 91.00 |" in md


def test_a_pair_naming_no_column_is_one_line_and_writes_nothing(runs, tmp_path):
  """`--pair mlfd kdd` used to drop the comparison silently."""
  s0, s1 = runs
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, "-m", "mlfd_jax.report", s0, s1, "--out", str(out),
                         "--pair", "mlfd", "kdd"], capture_output=True, text=True)
  assert (proc.returncode, proc.stderr) == (2, (
      "mlfd_jax.report: error: --pair mlfd kdd: no run has a column 'kdd'; columns: "
      f"{', '.join(report.methods_of(report.per_run(report.load_runs([s0, s1]))))}\n"))
  assert not out.exists()


def test_an_output_the_os_refuses_is_one_line(runs, tmp_path):
  s0, _ = runs
  blocker = tmp_path / "file"
  blocker.write_text("")
  proc = subprocess.run([sys.executable, "-m", "mlfd_jax.report", s0, "--out",
                         str(blocker / "out")], capture_output=True, text=True)
  assert (proc.returncode, proc.stderr) == (
      2, f"mlfd_jax.report: error: {blocker / 'out'}: Not a directory\n")
  assert blocker.read_text() == ""


def test_runs_of_one_seed_from_two_configs_are_not_merged(runs, tmp_path):
  s0, _ = runs
  other = json.loads(open(f"{s0}/results.json").read())
  other["config"] = "c.py:budget=4"
  (tmp_path / "b4").mkdir()
  (tmp_path / "b4" / "results.json").write_text(json.dumps(other))
  with pytest.raises(ValueError) as e:
    report.load_runs([s0, str(tmp_path / "b4")])
  assert str(e.value) == (f"{tmp_path}/b4/results.json (c.py:budget=4) and {s0}/results.json "
                          "(c.py) are both seed 0 of different configs; tag one GROUP=PATH to "
                          "compare them")
  assert len(report.load_runs([s0, f"b4={tmp_path / 'b4'}"])) == 2


def test_results_keep_the_configs_dataset_order_whatever_trained_first(tmp_path):
  # launch/seed_lanes.sh trains a seed's teachers out of order (lane 0 the 1st and 3rd, lane 1
  # the 2nd, copied in later); the file, and so the report's rows, stay in the config's order.
  from mlfd_jax import results
  w = str(tmp_path / "w")
  (tmp_path / "w").mkdir()
  order = ("tin3_0", "tin3_1", "tin3_2")
  for name, model in [("tin3_0", "teacher"), ("tin3_2", "teacher"), ("tin3_1", "teacher"),
                      ("tin3_0", "student")]:
    results.record(w, config_path="c.py", seed=9, dataset=name, num_classes=10, model=model,
                   entry=_entry(0.5), order=order)
  saved = results.load(w)["datasets"]
  assert list(saved) == list(order)
  assert sorted(saved["tin3_0"]) == ["num_classes", "student", "teacher"]
  md = open(report.write_report([w], str(tmp_path / "out"))["md"]).read()
  rows = [line.split(" | ")[0] for line in md.splitlines() if line.startswith("| tin3_")]
  assert rows[:3] == ["| tin3_0", "| tin3_1", "| tin3_2"]


def test_runs_are_ordered_by_seed_number_not_as_text(tmp_path):
  """Seed 10 comes after seed 9, not between seeds 1 and 2, in every per-run column and list."""
  runs = [_write(tmp_path / f"s{seed}", seed, {"a": {
      "num_classes": 2, "teacher": _entry(.50),
      "student": {**_entry(.50 + seed / 100), "method": "mlfd", "levels": "all"}}})
      for seed in (10, 2, 1)]
  md = open(report.write_report(runs, str(tmp_path / "out"))["md"]).read()
  assert "| dataset | method | mean ± std | seed1 | seed2 | seed10 |" in md
  assert "| a | mlfd | +4.33 ± 4.93 (3/3 > 0) | +1.00 | +2.00 | +10.00 |" in md
  assert ("| mlfd − individual | 3 | 3 / 0 / 0 | +4.33 ± 4.93 | seed1 +1.00, seed2 +2.00, "
          "seed10 +10.00 |") in md
