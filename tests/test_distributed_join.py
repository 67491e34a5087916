"""`--distributed` launches that cannot work end in one line on every process, through the real
command line: no cluster to join, incomplete launch flags, an unreachable coordinator, a process
that never comes, and processes started with different counts. The workdir is left as it was."""

import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ERR = "mlfd_jax: error: "
TRACE = " (MLFD_TRACEBACK=1 shows where)"
HOW = ("start the processes under SLURM, Open MPI or on a TPU VM, or pass "
       "--coordinator_address=HOST:PORT --num_processes=N --process_id=I")


def _env():
  """No cluster in sight (a CI job may run under SLURM), one CPU device, gloo collectives."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "MLFD_TRACEBACK"))}
  return {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
          "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}


def _start(workdir, *flags):
  return subprocess.Popen([sys.executable, "-m", "mlfd_jax.main", "--config=configs/digits.py:tiny",
                           f"--workdir={workdir}", *flags], cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture
def workdir(tmp_path):
  """A workdir that already holds a file, which no failed launch may touch."""
  (tmp_path / "w").mkdir()
  (tmp_path / "w" / "notes.txt").write_text("mine\n")
  return tmp_path / "w"


def _failed(proc, workdir) -> str:
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 2, err[-3000:]
  assert sorted(p.name for p in workdir.iterdir()) == ["notes.txt"]
  assert (workdir / "notes.txt").read_text() == "mine\n"
  return err


@pytest.mark.parametrize("flags, line", [
    (["--distributed"], f"--distributed found no cluster to join; {HOW}{TRACE}"),
    (["--num_processes=2"], f"--num_processes is for multi-process runs: add --distributed{TRACE}"),
    (["--distributed", "--num_processes=2"],
     f"--num_processes also needs --coordinator_address, --process_id (the three go together)"
     f"{TRACE}"),
    (["--distributed", "--coordinator_address=localhost:1", "--num_processes=2",
      "--process_id=2"], f"--process_id=2: must be in 0..1 for --num_processes=2{TRACE}"),
    (["--distributed", "--distributed_timeout=0"],
     f"--distributed_timeout=0: must be a positive number of seconds{TRACE}"),
], ids=["no_cluster", "without_distributed", "incomplete", "process_id_out_of_range",
        "zero_timeout"])
def test_launch_flags_that_cannot_work(workdir, flags, line):
  assert _failed(_start(workdir, *flags), workdir) == ERR + line + "\n"


@pytest.mark.parametrize("process_id", [0, 1], ids=["coordinator_alone", "no_coordinator"])
def test_a_process_that_meets_nobody_stops_after_the_timeout(workdir, process_id):
  """Process 0 waiting for a process that never starts, and process 1 calling a coordinator that
  is not there: JAX itself would abort with a C++ stack trace after 5 minutes."""
  address = f"localhost:{_free_port()}"
  start = time.time()
  err = _failed(_start(workdir, "--distributed", f"--coordinator_address={address}",
                       "--num_processes=2", f"--process_id={process_id}",
                       "--distributed_timeout=3"), workdir)
  assert err == (
      f"{ERR}process {process_id} could not meet the run's other processes at {address} within "
      f"3 s: check that every process was started, each with the same --num_processes, and that "
      f"the coordinator can be reached (--distributed_timeout=SECONDS sets the wait)\n")
  assert time.time() - start < 60


def test_processes_started_with_different_counts_all_stop_with_the_same_line(workdir):
  """Process 1 says 3 processes where the coordinator says 2: JAX lets it join, and it would
  hang at the first collective. Both stop at once, saying what each was told."""
  flags = ["--distributed", f"--coordinator_address=localhost:{_free_port()}",
           "--distributed_timeout=60"]
  procs = [_start(workdir, *flags, "--num_processes=2", "--process_id=0"),
           _start(workdir, *flags, "--num_processes=3", "--process_id=1")]
  errs = [_failed(p, workdir) for p in procs]
  line = (f"{ERR}mismatched process counts: the coordinator runs 2 processes, started with "
          f"--num_processes=2 (process 0), 3 (process 1); start every process with "
          f"--num_processes=2{TRACE}\n")
  assert errs == [line, line]
