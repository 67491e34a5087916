"""launch/seeds.sh: every command of every seed, in order, and with --lanes each lane's seeds
pinned to its own cores. `python` is replaced by a recorder, so nothing trains."""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(tmp_path, *args):
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "python").write_text('#!/usr/bin/env bash\n'
                               'echo "$(taskset -pc $$ | sed "s/.*: //") $*" >> "$FAKE_LOG"\n')
  (fake / "python").chmod(0o755)
  log = tmp_path / "calls.txt"
  env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "FAKE_LOG": str(log)}
  proc = subprocess.run(["launch/seeds.sh", "configs/x.py", str(tmp_path / "r"), "3",
                         "--methods", "kd", *args, "--config.data_root=d"],
                        cwd=ROOT, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  calls = [line.split(" ", 1) for line in log.read_text().splitlines()]
  return [(cpus, cmd.replace(str(tmp_path), "T")) for cpus, cmd in calls]


def _seed_commands(s):
  base = f"-m mlfd_jax.main --config=configs/x.py --workdir=T/r/seed{s} --config.seed={s}"
  return [f"{base} --config.data_root=d",
          f"{base} --config.stage=students --config.distill.method=kd --config.data_root=d"]


def test_one_seed_after_another(tmp_path):
  calls = _run(tmp_path)
  assert [c for _, c in calls] == [*_seed_commands(0), *_seed_commands(1), *_seed_commands(2),
                                   "-m mlfd_jax.report T/r/seed0 T/r/seed1 T/r/seed2 --out "
                                   "T/r/report"]


@pytest.mark.skipif(os.cpu_count() < 2, reason="two lanes need two cores")
def test_two_lanes_pin_their_seeds_to_their_own_cores(tmp_path):
  calls = _run(tmp_path, "--lanes", "2")
  by_seed = {s: [cpus for cpus, c in calls if f"seed{s} " in c + " " and "main" in c]
             for s in range(3)}
  assert by_seed == {0: ["0", "0"], 1: ["1", "1"], 2: ["0", "0"]}
  # each seed's own commands stay in order, and the report comes last, over all seeds
  for s in range(3):
    assert [c for _, c in calls if f"seed{s} " in c + " " and "main" in c] == _seed_commands(s)
  assert calls[-1][1] == "-m mlfd_jax.report T/r/seed0 T/r/seed1 T/r/seed2 --out T/r/report"
