"""The workdir: checked writable before anything runs, and held by one run at a time.

Two runs on one workdir would interleave checkpoints and overwrite each other's results.json.
Process 0 holds an exclusive `flock` on `WORKDIR/.lock` for the life of the run; the kernel
drops it when the process ends, however it ends (`kill -9` included), so a killed run never
leaves the workdir stuck. The file itself says who holds it, for the error message, and a run
that ends normally removes it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

import jax

LOCK_NAME = ".lock"


class WorkdirInUse(Exception):
  """Another live run holds the workdir."""


def check_writable(workdir: str) -> str:
  """Creates `workdir` if needed and fails early, in one line, if it cannot be written."""
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f"workdir {workdir} is a file, not a directory")
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{os.getpid()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f"workdir {workdir} is not writable ({e.strerror})") from None
  return workdir


def use_compilation_cache(workdir: str) -> None:
  """Caches XLA compilations on disk: identical programs (two teachers of one architecture,
  a rerun, a resume) compile once. `JAX_COMPILATION_CACHE_DIR` overrides the location."""
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))


_HELD: set[str] = set()  # lock files this process holds (taking one again is a no-op)


class Lock:
  """The exclusive hold of one run (process 0) on a workdir, as a context manager."""

  def __init__(self, workdir: str, command: str = ""):
    self.path, self.command = os.path.join(workdir, LOCK_NAME), command
    self._fd = None

  def __enter__(self) -> "Lock":
    # Process 0 holds it. Asking jax for the process index only after a distributed start
    # keeps the backends (and their log lines) uninitialised until the lock is held.
    main = not jax.distributed.is_initialized() or jax.process_index() == 0
    if not main or self.path in _HELD:
      return self
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise WorkdirInUse(f"workdir {os.path.dirname(self.path)} is in use by another run "
                         f"({holder}); wait for it to end or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                             "command": self.command}).encode())
    self._fd = fd
    _HELD.add(self.path)
    return self

  def __exit__(self, *exc) -> None:
    """Removes the lock file (a finished run leaves the workdir as it found it) and drops the
    flock by closing the descriptor."""
    if self._fd is None:
      return
    try:
      os.remove(self.path)
    except OSError:
      pass
    os.close(self._fd)
    self._fd = None
    _HELD.discard(self.path)


def _read_holder(fd: int) -> str:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    info = json.loads(os.read(fd, 4096).decode() or "{}")
  except (OSError, ValueError):
    info = {}
  if not info:
    return "holder unknown"
  return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"
