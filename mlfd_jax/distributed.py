"""Joining a multi-process run (`--distributed`) with a bounded wait and one-line errors.

`jax.distributed.initialize()` reports a process that cannot meet the others (an unreachable
coordinator, a process that was never started) by aborting in C++ after its timeout: a stack
trace and exit code 134, minutes later. And a process started with another process count than
the coordinator's joins silently, to hang at the first collective. Here a watchdog ends a join
that has not completed within `timeout_s` with one line, and the processes compare the counts
they were started with before anything else runs, so every process of a mismatched launch stops
with the same line.
"""

from __future__ import annotations

import threading
from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

HOW = ("start the processes under SLURM, Open MPI or on a TPU VM, or pass "
       "--coordinator_address=HOST:PORT --num_processes=N --process_id=I")


class JoinError(ValueError):
  """This process cannot take its place in the run: an input error, reported in one line."""


def check_flags(*, distributed: bool, coordinator_address: str | None,
                num_processes: int | None, process_id: int | None, timeout_s: float) -> None:
  """The launch flags are complete and consistent (checked before anything is started)."""
  if not timeout_s > 0:
    raise JoinError(f"--distributed_timeout={timeout_s:g}: must be a positive number of seconds")
  manual = {"coordinator_address": coordinator_address, "num_processes": num_processes,
            "process_id": process_id}
  given = [k for k, v in manual.items() if v is not None]
  if given and not distributed:
    raise JoinError(f"--{given[0]} is for multi-process runs: add --distributed")
  if given and len(given) < len(manual):
    missing = ", ".join(f"--{k}" for k in manual if k not in given)
    raise JoinError(f"--{' --'.join(given)} also needs {missing} (the three go together)")
  if num_processes is not None and num_processes < 1:
    raise JoinError(f"--num_processes={num_processes}: must be at least 1")
  if process_id is not None and not 0 <= process_id < num_processes:
    raise JoinError(f"--process_id={process_id}: must be in 0..{num_processes - 1} "
                    f"for --num_processes={num_processes}")


def join(*, coordinator_address: str | None, num_processes: int | None,
         process_id: int | None, timeout_s: float, on_timeout: Callable[[str], None]) -> None:
  """Joins the run (the flags, else what JAX detects: SLURM, Open MPI, a TPU VM). Calls
  `on_timeout(message)` from a watchdog thread if the others are not met within `timeout_s`
  (it must end the process); raises JoinError for a launch that cannot work."""
  who = f"process {process_id}" if process_id is not None else "this process"
  where = f" at {coordinator_address}" if coordinator_address else ""
  watchdog = threading.Timer(timeout_s, on_timeout, args=(
      f"{who} could not meet the run's other processes{where} within {timeout_s:g} s: check "
      f"that every process was started, each with the same --num_processes, and that the "
      f"coordinator can be reached (--distributed_timeout=SECONDS sets the wait)",))
  watchdog.daemon = True
  watchdog.start()
  try:
    # JAX's own timeout comes later than ours: its expiry is an abort, not an error.
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=int(timeout_s) + 60)
  except (ValueError, TypeError) as e:  # nothing detected, or detected values JAX rejects
    found = ("found no cluster to join" if coordinator_address is None
             else f"cannot join the run ({e})")
    raise JoinError(f"--distributed {found}; {HOW}") from None
  finally:
    watchdog.cancel()
  _check_counts(num_processes)


def _check_counts(expected: int | None) -> None:
  """Every process compares the count it was started with against the coordinator's: a
  mismatch stops all of them here, not at a hang in the first collective."""
  count = jax.process_count()
  mine = count if expected is None else expected
  said = np.asarray(multihost_utils.process_allgather(np.int32(mine))).reshape(-1)
  if np.any(said != count):
    by = ", ".join(f"{int(n)} (process {i})" for i, n in enumerate(said))
    raise JoinError(f"mismatched process counts: the coordinator runs {count} processes, "
                    f"started with --num_processes={by}; start every process with "
                    f"--num_processes={count}")
