"""launch/seeds.sh: every command of every seed, in order, and with --lanes each lane's seeds
pinned to its own cores. `python` is replaced by a recorder, so nothing trains."""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The cores this process may use, as the scripts' `nproc` counts them (not os.cpu_count(): under
# `taskset -c 0` the machine has two cores but the scripts refuse a second lane).
USABLE_CORES = len(os.sched_getaffinity(0))
needs_two_cores = pytest.mark.skipif(USABLE_CORES < 2, reason="two lanes need two usable cores")


def _launch(tmp_path, argv, fail="", datasets="a"):
  """Run a launch script with `python` replaced by a recorder of (allowed cpus, argv); a call
  whose argv ends with `fail` exits 3 (a training command that failed). Like the real command,
  `stage=check` prints the config's `datasets` and `stage=teachers` leaves a folder per teacher
  (those of --config.teacher_datasets, else all) in its workdir."""
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "python").write_text(
      '#!/usr/bin/env bash\n'
      'echo "$(taskset -pc $$ | sed "s/.*: //") $*" >> "$FAKE_LOG"\n'
      'echo "${XLA_PYTHON_CLIENT_MEM_FRACTION:-unset}" >> "$FAKE_LOG.memory"\n'
      'if [[ -n "$FAKE_FAIL" && "$*" == *"$FAKE_FAIL" ]]; then exit 3; fi\n'
      'if [[ "$*" == *--config.stage=check* ]]; then echo "datasets: $FAKE_DATASETS"; fi\n'
      'if [[ "$*" == *--config.stage=teachers* ]]; then\n'
      '  w=$(sed -n "s/.*--workdir=\\([^ ]*\\).*/\\1/p" <<< "$*")\n'
      '  t=$(sed -n "s/.*--config.teacher_datasets=\\([^ ]*\\).*/\\1/p" <<< "$*")\n'
      '  t=${t:-$FAKE_DATASETS}; for n in ${t//,/ }; do mkdir -p "$w/teachers/$n"; done\n'
      'fi\n')
  (fake / "python").chmod(0o755)
  log = tmp_path / "calls.txt"
  env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "FAKE_LOG": str(log),
         "FAKE_FAIL": fail, "FAKE_DATASETS": datasets}
  proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
  lines = log.read_text().splitlines() if log.exists() else []
  calls = [line.split(" ", 1) for line in lines]
  return proc, [(cpus, cmd.replace(str(tmp_path), "T")) for cpus, cmd in calls]


def _run(tmp_path, *args):
  proc, calls = _launch(tmp_path, ["launch/seeds.sh", "configs/x.py", str(tmp_path / "r"), "3",
                                   "--methods", "kd", *args, "--config.data_root=d"])
  assert proc.returncode == 0, proc.stderr
  return _after_the_check(calls)


def _after_the_check(calls, prefix="T/r"):
  """The calls after the first, which must check the config with the extra method (kd) before
  anything trains."""
  assert calls[0][1] == (f"-m mlfd_jax.main --config=configs/x.py --workdir={prefix}/seed0 "
                         "--config.seed=0 --config.stage=check --config.distill.method=kd "
                         "--config.data_root=d")
  return calls[1:]


def _seed_commands(s):
  base = f"-m mlfd_jax.main --config=configs/x.py --workdir=T/r/seed{s} --config.seed={s}"
  return [f"{base} --config.data_root=d",
          f"{base} --config.stage=students --config.distill.method=kd --config.data_root=d"]


def test_one_seed_after_another(tmp_path):
  calls = _run(tmp_path)
  assert [c for _, c in calls] == [*_seed_commands(0), *_seed_commands(1), *_seed_commands(2),
                                   "-m mlfd_jax.report T/r/seed0 T/r/seed1 T/r/seed2 --out "
                                   "T/r/report"]


@needs_two_cores
def test_two_lanes_pin_their_seeds_to_their_own_cores(tmp_path):
  calls = _run(tmp_path, "--lanes", "2")
  by_seed = {s: [cpus for cpus, c in calls if f"seed{s} " in c + " " and "main" in c]
             for s in range(3)}
  assert by_seed == {0: ["0", "0"], 1: ["1", "1"], 2: ["0", "0"]}
  # each seed's own commands stay in order, and the report comes last, over all seeds
  for s in range(3):
    assert [c for _, c in calls if f"seed{s} " in c + " " and "main" in c] == _seed_commands(s)
  assert calls[-1][1] == "-m mlfd_jax.report T/r/seed0 T/r/seed1 T/r/seed2 --out T/r/report"


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_named_method_trains_under_its_name(tmp_path, lanes):
  if lanes > USABLE_CORES:
    pytest.skip("two lanes need two usable cores")
  proc, calls = _launch(tmp_path, ["launch/seeds.sh", "configs/x.py", str(tmp_path / "r"), "2",
                                   "--methods", "kd feed:feed_pre", "--lanes", str(lanes)])
  assert proc.returncode == 0, proc.stderr
  named = "--config.distill.method=feed --config.distill.name=feed_pre"
  assert calls[1][1].endswith(f"--config.stage=check {named}")  # checked before any training
  for s in (0, 1):
    assert [c for _, c in calls if f"seed{s} " in c + " " and "students" in c] == [
        f"-m mlfd_jax.main --config=configs/x.py --workdir=T/r/seed{s} --config.seed={s} "
        f"--config.stage=students {m}" for m in ("--config.distill.method=kd", named)]


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_failed_run_stops_its_seed_and_no_report_is_made(tmp_path, lanes):
  if lanes > USABLE_CORES:
    pytest.skip("two lanes need two usable cores")
  proc, calls = _launch(
      tmp_path, ["launch/seeds.sh", "configs/x.py", str(tmp_path / "r"), "3", "--methods", "kd",
                 "--lanes", str(lanes), "--config.data_root=d"],
      fail="--config.seed=1 --config.data_root=d")
  commands = [c for _, c in _after_the_check(calls)]
  assert proc.returncode != 0
  assert _seed_commands(1)[1] not in commands  # nothing more on the failed seed's workdir
  assert not any("report" in c for c in commands)
  if lanes == 2:  # the other lane's seeds still finish; lane 1 has seed 1 alone
    assert proc.stderr == f"a seed failed: see {tmp_path / 'r'}/seed*.log\n"
    assert [c for c in commands if "seed1" not in c] == [*_seed_commands(0), *_seed_commands(2)]
  else:
    assert commands == [*_seed_commands(0), _seed_commands(1)[0]]


@needs_two_cores
def test_ablations_lane_stops_at_a_failed_run(tmp_path):
  prefix = tmp_path / "r"
  for s in (0, 1):
    (prefix / f"seed{s}" / "teachers").mkdir(parents=True)
  proc, calls = _launch(
      tmp_path, ["launch/ablations.sh", "configs/x.py", str(prefix), "2", "--lanes", "2"],
      fail="--config.joint.mode=per_dataset")
  assert proc.returncode == 1
  assert proc.stderr == f"ablations.sh: a seed failed: see {prefix}/ablations_seed*.log\n"
  for s in (0, 1):
    mine = [c for _, c in calls if f"seed{s} " in c + " "]
    # the default, mlfd_last, then the first ablation, which failed: nothing after it
    assert len(mine) == 3 and mine[-1].endswith("--config.joint.mode=per_dataset"), mine
  assert not any("report" in c for _, c in calls)


@pytest.mark.parametrize("argv", [["R"], ["R", "two"], ["R", "0"]])
def test_gpu_study_refuses_a_missing_or_bad_seed_count_in_one_line(tmp_path, argv):
  # before: an unbound-variable error from bash, or seeds.sh run with N = two
  proc, calls = _launch(tmp_path, ["launch/gpu_study.sh", *argv])
  assert (proc.returncode, proc.stderr, calls) == (
      2, "gpu_study.sh: usage: launch/gpu_study.sh PREFIX N [--config.K=V ...] (N: seeds, a "
      "positive number)\n", [])


@needs_two_cores
def test_gpu_study_runs_its_seeds_side_by_side_with_a_share_of_the_gpu_each(tmp_path):
  proc, calls = _launch(tmp_path, ["launch/gpu_study.sh", str(tmp_path / "r"), "2",
                                   "--config.data_root=d"])
  assert proc.returncode == 0, proc.stderr
  assert [c for _, c in calls if "--config.stage=check" in c] == [
      "-m mlfd_jax.main --config=configs/tiny_imagenet_subsets.py:width=1.0,budget=4 "
      "--workdir=T/r/seed0 --config.seed=0 --config.stage=check --config.distill.method=kd "
      "--config.joint.fusion_level=stage4 --config.joint.precompute_teachers=True "
      "--config.distill.precompute_targets=True --config.teacher_train.dtype=bfloat16 "
      "--config.joint_train.dtype=bfloat16 --config.student_train.dtype=bfloat16 "
      "--config.data_root=d"]
  calls = calls[1:]
  study = ("--config.joint.fusion_level=stage4 --config.joint.precompute_teachers=True "
           "--config.distill.precompute_targets=True --config.teacher_train.dtype=bfloat16 "
           "--config.joint_train.dtype=bfloat16 --config.student_train.dtype=bfloat16 "
           "--config.data_root=d")
  for s, cpus in ((0, "0"), (1, "1")):  # one lane a seed, each on its own cores
    base = (f"-m mlfd_jax.main --config=configs/tiny_imagenet_subsets.py:width=1.0,budget=4 "
            f"--workdir=T/r/seed{s} --config.seed={s}")
    assert [(c, m) for c, m in calls if f"seed{s} " in m + " " and "main" in m] == [
        (cpus, f"{base} {study}"),
        (cpus, f"{base} --config.stage=students --config.distill.method=kd {study}")]
  assert calls[-1][1] == "-m mlfd_jax.report T/r/seed0 T/r/seed1 --out T/r/report"
  # two processes share one GPU: each takes 0.45 of its memory, not JAX's default 0.75
  assert set((tmp_path / "calls.txt.memory").read_text().split()) == {"0.45"}


def _seed_lanes(tmp_path, *args, fail="", datasets="a", teachers=("a",)):
  """launch/seed_lanes.sh on seed 7 of configs/x.py, its joint teacher's files and `teachers`
  made up front (the fake `python` trains nothing, and lane 1 copies them)."""
  w = tmp_path / "r" / "seed7"
  for d in ("joint", *(f"teachers/{t}" for t in teachers)):
    (w / d).mkdir(parents=True)
  (w / "results.json").write_text("{}")
  return _launch(tmp_path, ["launch/seed_lanes.sh", "configs/x.py", str(tmp_path / "r"), "7",
                            *args], fail=fail, datasets=datasets)


@needs_two_cores
def test_seed_lanes_checks_every_method_then_cuts_the_students_into_equal_lanes(tmp_path):
  proc, calls = _seed_lanes(tmp_path, "--methods", "mlfd kd feed:feed_pre", "--baseline_joint",
                            "--lanes", "2", "--config.data_root=d", datasets="a,b,c",
                            teachers=("a", "b", "c"))
  assert proc.returncode == 0, proc.stderr
  main = "-m mlfd_jax.main --config=configs/x.py --workdir=T/r/seed7"
  flags = "--config.seed=7"
  feed_pre = "feed --config.distill.name=feed_pre"  # METHOD:NAME
  checks = [c for _, c in calls[:3]]
  assert checks == [f"{main} {flags} --config.stage=check --config.distill.method={m} "
                    "--config.data_root=d" for m in ("mlfd", "kd", feed_pre)]
  by_lane = {cpus: [c for p, c in calls[3:-1] if p == cpus] for cpus in ("0", "1")}
  students = "--config.stage=students --config.distill.method"
  # 9 students in 2 lanes: 5 and 4, in --methods order, kd's cut between the lanes
  assert by_lane["0"] == [f"{main} {flags} --config.stage=teachers --config.data_root=d",
                          f"{main} {flags} --config.stage=joint --config.data_root=d",
                          f"{main} {flags} {students}=mlfd --config.data_root=d",
                          f"{main} {flags} {students}=kd --config.student_datasets=a,b "
                          "--config.data_root=d"]
  assert by_lane["1"] == [f"{main}_bj {flags} --config.stage=baseline_joint --config.data_root=d",
                          f"{main}_lane1 {flags} {students}=kd --config.student_datasets=c "
                          "--config.data_root=d",
                          f"{main}_lane1 {flags} {students}={feed_pre} --config.data_root=d"]
  # lane 1's students start after the joint teacher, from a copy of its workdir
  order = [c for _, c in calls]
  assert order.index(by_lane["1"][1]) > order.index(by_lane["0"][1])
  lane1 = tmp_path / "r" / "seed7_lane1"
  assert sorted(p.name for p in lane1.iterdir()) == ["joint", "results.json", "teachers"]
  assert sorted(p.name for p in (lane1 / "teachers").iterdir()) == ["a", "b", "c"]
  assert calls[-1][1] == ("-m mlfd_jax.report T/r/seed7 T/r/seed7_lane1 T/r/seed7_bj "
                          "--out T/r/report --runs_out T/r/report")


@needs_two_cores
def test_seed_lanes_leaves_a_lane_idle_only_when_there_are_fewer_students_than_lanes(tmp_path):
  proc, calls = _seed_lanes(tmp_path, "--methods", "mlfd", "--lanes", "2")
  assert proc.returncode == 0, proc.stderr
  assert [(p, c.split("--config.stage=")[1]) for p, c in calls[1:-1]] == [
      ("0", "teachers"), ("0", "joint"), ("0", "students --config.distill.method=mlfd")]
  assert not (tmp_path / "r" / "seed7_lane1").exists()
  assert calls[-1][1] == "-m mlfd_jax.report T/r/seed7 --out T/r/report --runs_out T/r/report"


@needs_two_cores
def test_seed_lanes_deals_the_teachers_to_the_lanes_and_gathers_them_for_the_joint_teacher(
    tmp_path):
  main = "-m mlfd_jax.main --config=configs/x.py --workdir=T/r/seed7"
  flags = "--config.seed=7"
  proc, calls = _seed_lanes(tmp_path, "--methods", "mlfd kd", "--baseline_joint", "--lanes", "2",
                            datasets="a,b,c", teachers=())
  assert proc.returncode == 0, proc.stderr
  by_lane = {cpus: [c for p, c in calls[2:-1] if p == cpus] for cpus in ("0", "1")}
  students = "--config.stage=students --config.distill.method"
  # teacher k in lane k mod 2; lane 1 trains its own after the joint baseline, in a workdir of
  # its own, and the joint teacher starts once every teacher is in lane 0's workdir
  assert by_lane["0"] == [f"{main} {flags} --config.stage=teachers --config.teacher_datasets=a,c",
                          f"{main} {flags} --config.stage=joint",
                          f"{main} {flags} {students}=mlfd"]
  assert by_lane["1"] == [f"{main}_bj {flags} --config.stage=baseline_joint",
                          f"{main}_teachers1 {flags} --config.stage=teachers "
                          "--config.teacher_datasets=b",
                          f"{main}_lane1 {flags} {students}=kd"]
  order = [c for _, c in calls]
  assert order.index(by_lane["0"][1]) > order.index(by_lane["1"][1])
  for w in ("seed7", "seed7_lane1"):
    assert sorted(p.name for p in (tmp_path / "r" / w / "teachers").iterdir()) == ["a", "b", "c"]
  assert sorted(p.name for p in (tmp_path / "r" / "seed7").iterdir()) == [
      "joint", "results.json", "teachers"]  # no copy left half-made
  assert calls[-1][1] == ("-m mlfd_jax.report T/r/seed7 T/r/seed7_lane1 T/r/seed7_bj "
                          "T/r/seed7_teachers1 --out T/r/report --runs_out T/r/report")
  # run again (as after a preemption): every teacher is now in lane 0's workdir, so lane 0 alone
  # resumes (here: skips) them all, and the report still reads lane 1's teacher results
  (tmp_path / "bin").rename(tmp_path / "bin_first")
  (tmp_path / "calls.txt").unlink()
  proc, calls = _launch(tmp_path, ["launch/seed_lanes.sh", "configs/x.py", str(tmp_path / "r"),
                                   "7", "--methods", "mlfd kd", "--baseline_joint", "--lanes",
                                   "2"], datasets="a,b,c")
  assert proc.returncode == 0, proc.stderr
  teachers = [(p, c) for p, c in calls if "--config.stage=teachers" in c]
  assert teachers == [("0", f"{main} {flags} --config.stage=teachers")]
  assert calls[-1][1].startswith("-m mlfd_jax.report T/r/seed7 T/r/seed7_lane1 T/r/seed7_bj "
                                 "T/r/seed7_teachers1 ")


@pytest.mark.parametrize("script", ["seed_lanes.sh", "seeds.sh"])
def test_nothing_trains_when_a_methods_config_does_not_check(tmp_path, script):
  if script == "seeds.sh":
    proc, calls = _launch(tmp_path, ["launch/seeds.sh", "configs/x.py", str(tmp_path / "r"), "2",
                                     "--methods", "mlfd kdd"], fail="--config.distill.method=kdd")
  else:
    proc, calls = _seed_lanes(tmp_path, "--methods", "mlfd kdd", "--lanes", "1",
                              fail="--config.distill.method=kdd")
  assert proc.returncode == 2
  assert proc.stderr == (f"{script}: the config with method kdd does not check (above); "
                         "nothing trained\n")
  assert [c.split("--config.stage=")[1] for _, c in calls] == [
      "check --config.distill.method=mlfd", "check --config.distill.method=kdd"]


@needs_two_cores
def test_seed_lanes_reports_nothing_when_the_joint_teacher_fails(tmp_path):
  proc, calls = _seed_lanes(tmp_path, "--methods", "mlfd kd", "--baseline_joint", "--lanes", "2",
                            fail="--config.stage=joint")
  assert proc.returncode == 1
  assert proc.stderr == (f"seed_lanes.sh: stage 1, the joint teacher "
                         f"failed: see {tmp_path}/r/seed7.lane*.log; nothing was reported\n")
  stages = sorted(c.split("--config.stage=")[1].split()[0] for _, c in calls)
  assert stages == ["baseline_joint", "check", "check", "joint", "teachers"]
  assert not (tmp_path / "r" / "seed7_lane1").exists()


def _recorders(tmp_path, names, describe_rc=1):
  """Fake `gcloud`, `tar` and `srun` that log their argv (one call a line, fields split by
  \\x1f); `gcloud ... describe` exits with `describe_rc` (1: no such slice)."""
  fake = tmp_path / "fakebin"
  fake.mkdir(exist_ok=True)
  log = tmp_path / "calls.log"
  for name in names:
    (fake / name).write_text(
        '#!/usr/bin/env bash\n'
        f'{{ printf "%s\\x1f" {name} "$@"; echo; }} >> "{log}"\n'
        f'if [[ " $* " == *" describe "* ]]; then exit {describe_rc}; fi\n')
    (fake / name).chmod(0o755)
  return {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}, log


def _calls(log):
  return [line.rstrip("\x1f").split("\x1f") for line in log.read_text().splitlines()]


TPU = ["in3", "us-central2-b", "configs/imagenet_subsets.py", "gs://b/mlfd/in3",
       "--config.seed=1"]


def test_tpu_vm_dry_run_prints_every_command_and_runs_none(tmp_path):
  env, log = _recorders(tmp_path, ["gcloud", "tar"])
  proc = subprocess.run(["launch/tpu_vm.sh", "--dry-run", "--create", "v4-32", "--delete", *TPU],
                        cwd=ROOT, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  assert not log.exists()  # nothing ran
  vm, where = "gcloud compute tpus tpu-vm", "--zone us-central2-b"
  assert proc.stdout.splitlines() == [
      f"{vm} create in3 {where} --accelerator-type v4-32 --version tpu-ubuntu2204-base",
      f"tar -czf /tmp/mlfd_jax_code.tgz --exclude=.git --exclude=./runs --exclude=./.venv -C "
      f"{ROOT} .",
      f"{vm} scp /tmp/mlfd_jax_code.tgz in3:~/mlfd_jax_code.tgz {where} --worker=all",
      f"{vm} ssh in3 {where} --worker=all --command 'rm -rf ~/mlfd_jax && mkdir -p ~/mlfd_jax && "
      "tar -xzf ~/mlfd_jax_code.tgz -C ~/mlfd_jax && cd ~/mlfd_jax && pip install -q -r "
      "requirements.txt '\\''jax[tpu]'\\'''",
      f"{vm} ssh in3 {where} --worker=all --command 'cd ~/mlfd_jax && nohup python -m "
      "mlfd_jax.main --config=configs/imagenet_subsets.py --workdir=gs://b/mlfd/in3 "
      "--distributed --config.seed=1 > run.log 2>&1 < /dev/null &'",
      f"{vm} ssh in3 {where} --worker=0 --command 'cd ~/mlfd_jax && sleep 5 && tail -n +1 -F "
      "run.log --pid=$(pgrep -f '\\''python -m mlfd_jax[.]main'\\'' | head -1)'",
      f"{vm} delete in3 {where} --quiet",
  ]


@pytest.mark.parametrize("exists", [False, True])
def test_tpu_vm_runs_what_its_dry_run_prints(tmp_path, exists):
  """The real run issues exactly the dry run's commands (the printed lines are shell words),
  and creates the slice only when `describe` does not find it."""
  import shlex
  env, log = _recorders(tmp_path, ["gcloud", "tar"], describe_rc=0 if exists else 1)
  args = ["--create", "v4-32", *TPU]
  dry = subprocess.run(["launch/tpu_vm.sh", "--dry-run", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True)
  proc = subprocess.run(["launch/tpu_vm.sh", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stderr
  expected = [shlex.split(line) for line in dry.stdout.splitlines()]
  calls = [c for c in _calls(log) if "describe" not in c]
  assert calls == (expected[1:] if exists else expected)


def test_slurm_dry_run_and_run(tmp_path):
  env, log = _recorders(tmp_path, ["srun"])
  base = "python -m mlfd_jax.main --config=configs/x.py --workdir=runs/x"
  cases = [({}, [], f"srun {base} --config.seed=2"),
           ({"SLURM_NNODES": "4"}, [], f"srun {base} --distributed --config.seed=2"),
           ({"SLURM_GPUS_ON_NODE": "4"}, ["--per-gpu"],
            f"srun --ntasks-per-node=4 --gpus-per-task=1 {base} --distributed --config.seed=2")]
  for extra_env, flags, line in cases:
    cmd = ["launch/slurm_gpu.sh", *flags, "configs/x.py", "runs/x", "--config.seed=2"]
    e = {**env, **extra_env}
    dry = subprocess.run([cmd[0], "--dry-run", *cmd[1:]], cwd=ROOT, env=e, capture_output=True,
                         text=True)
    assert (dry.returncode, dry.stdout) == (0, line + "\n")
    assert subprocess.run(cmd, cwd=ROOT, env=e).returncode == 0
    assert _calls(log)[-1] == line.split()


VALID = '--methods "M ...", --baseline_joint, --lanes L, --config.K=V'


@pytest.mark.parametrize("argv,error", [
    (["seeds.sh", "configs/x.py"], 'seeds.sh: usage: launch/seeds.sh CONFIG PREFIX N '
     '[--methods "M ..."] [--baseline_joint] [--lanes L] [--config.K=V ...]'),
    (["seeds.sh", "configs/x.py", "R", "2", "--method", "kd"],
     f"seeds.sh: unknown option --method; valid: {VALID}"),
    (["seed_lanes.sh", "configs/x.py", "R", "7", "--config.seed=7", "--lanes", "two"],
     "seed_lanes.sh: --lanes needs a positive number of lanes; got two"),
    (["seed_lanes.sh", "configs/x.py", "R", "7", "--methods"],
     "seed_lanes.sh: --methods needs a value"),
    (["seed_lanes.sh", "configs/x.py", "R", "7", "--config.seed", "7"],  # K=V, one word
     f"seed_lanes.sh: unknown option --config.seed; valid: {VALID}"),
])
def test_seed_scripts_refuse_bad_options_in_one_line_before_anything_runs(tmp_path, argv, error):
  proc, calls = _launch(tmp_path, [f"launch/{argv[0]}", *argv[1:]])
  assert (proc.returncode, proc.stderr, calls) == (2, error + "\n", [])


def test_seed_script_options_may_follow_the_overrides(tmp_path):
  proc, calls = _launch(tmp_path, ["launch/seeds.sh", "configs/x.py", str(tmp_path / "r"), "1",
                                   "--config.data_root=d", "--methods", "kd"])
  assert proc.returncode == 0, proc.stderr
  assert [c for _, c in _after_the_check(calls)] == [
      *_seed_commands(0), "-m mlfd_jax.report T/r/seed0 --out T/r/report"]


@pytest.mark.parametrize("argv,error", [
    (["R"], 'ablations.sh: usage: launch/ablations.sh CONFIG PREFIX N [--seeds "S ..."] '
     "[--lanes L] [--config.K=V ...]"),
    (["R", "two"], "ablations.sh: N needs a positive number of seeds; got two"),
    (["R", "2", "--lanes", "0"], "ablations.sh: --lanes needs a positive number of lanes; got 0"),
    (["R", "2", "--seeds"], "ablations.sh: --seeds needs a value"),
    (["R", "2", "--config.seed", "1"],  # K=V, one word; before, it went on to python
     'ablations.sh: unknown option --config.seed; valid: --seeds "S ...", --lanes L, '
     "--config.K=V"),
    (["R", "2", "--methods", "kd"],  # the seed scripts' option, not this one's
     'ablations.sh: unknown option --methods; valid: --seeds "S ...", --lanes L, --config.K=V'),
    (["R", "2", "--seeds --lanes", "2"],  # two option names quoted as one word
     'ablations.sh: unknown option --seeds --lanes; valid: --seeds "S ...", --lanes L, '
     "--config.K=V"),
])
def test_ablations_refuses_bad_arguments_in_one_line_before_anything_runs(tmp_path, argv, error):
  proc, calls = _launch(tmp_path, ["launch/ablations.sh", "configs/x.py", *argv])
  assert (proc.returncode, proc.stderr, calls) == (2, error + "\n", [])


def test_ablations_options_may_follow_the_overrides(tmp_path):
  prefix = tmp_path / "r"
  (prefix / "seed1" / "teachers").mkdir(parents=True)
  proc, calls = _launch(tmp_path, ["launch/ablations.sh", "configs/x.py", str(prefix), "2",
                                   "--config.data_root=d", "--seeds", "1"])
  assert proc.returncode == 0, proc.stderr
  assert len(calls) == 6 and all("seed1 --config.seed=1" in c for _, c in calls), calls
  assert all(c.endswith("--config.data_root=d") for _, c in calls)
  # seed 0 has not run, so the report waits
  assert proc.stdout.endswith("the report waits for every seed\n")


@pytest.mark.parametrize("script,error", [
    ("launch/tpu_vm.sh", "tpu_vm.sh: unknown option --bogus; valid: --dry-run, --create TYPE, "
     "--version V, --delete"),
    ("launch/slurm_gpu.sh", "slurm_gpu.sh: unknown option --bogus; valid: --dry-run, --per-gpu"),
])
def test_launch_scripts_refuse_unknown_options_in_one_line(script, error):
  proc = subprocess.run([script, "--bogus", "a", "b"], cwd=ROOT, capture_output=True, text=True)
  assert (proc.returncode, proc.stderr, proc.stdout) == (2, error + "\n", "")
