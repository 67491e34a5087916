"""The workdir: checked writable before anything runs, and held by one run at a time.

Two runs on one workdir would interleave checkpoints and overwrite each other's results.json.
Process 0 holds `WORKDIR/.lock` for the life of the run, and the file says who holds it, for
the error message; a run that ends normally removes it. On a local disk the hold is an
exclusive `flock`, which the kernel drops when the process ends, however it ends (`kill -9`
included). A bucket has no locks: there the file carries a heartbeat the holder rewrites every
`HEARTBEAT_S` seconds, a lock whose heartbeat is older than `STALE_S` is a killed run's and is
taken over, and a run that finds its own token gone after writing it lost a race and stops.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid

import jax

from mlfd_jax import fileio

LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0  # how often a bucket lock's holder rewrites it
STALE_S = 180.0  # a bucket lock not rewritten for this long belongs to a run that was killed


class WorkdirInUse(Exception):
  """Another live run holds the workdir."""


def check_writable(workdir: str) -> str:
  """Creates `workdir` if needed and fails early, in one line, if it cannot be written.
  Returns it absolute (a local path) or as given (a URL such as gs://bucket/run)."""
  workdir = fileio.resolve(workdir)
  try:  # a bucket that cannot be reached fails here already
    is_file = fileio.exists(workdir) and not fileio.isdir(workdir)
  except OSError as e:
    raise _unwritable(workdir, e) from None
  if is_file:
    raise NotADirectoryError(f"workdir {workdir} is a file, not a directory")
  try:
    fileio.makedirs(workdir)
    probe = fileio.join(workdir, f".write_test.{os.getpid()}")
    fileio.write_atomic(probe, "")
    fileio.remove(probe)
  except OSError as e:
    raise _unwritable(workdir, e) from None
  return workdir


def _unwritable(workdir: str, e: OSError) -> PermissionError:
  return PermissionError(f"workdir {workdir} is not writable ({fileio.describe_error(e)})")


def use_compilation_cache(workdir: str) -> None:
  """Caches XLA compilations on disk: identical programs (two teachers of one architecture,
  a rerun, a resume) compile once. `JAX_COMPILATION_CACHE_DIR` overrides the location.

  Every program is cached, not only those over jax's default of 1 s of compiling: a resumed
  run then compiles nothing again (loading beat compiling even for the small programs of
  `configs/digits.py:tiny`: 29 against 37 s of CPU for a rerun, benchmarks/RESULTS.md).
  `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` overrides that threshold."""
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", fileio.join(workdir, "jax_cache"))
  if not os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


_HELD: set[str] = set()  # lock files this process holds (taking one again is a no-op)


def _holder() -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _in_use(workdir: str, holder: str) -> WorkdirInUse:
  return WorkdirInUse(f"workdir {workdir} is in use by another run ({holder}); wait for it "
                      f"to end or use another --workdir")


class Lock:
  """The exclusive hold of one run (process 0) on a workdir, as a context manager."""

  def __init__(self, workdir: str, command: str = ""):
    self.workdir, self.command = workdir, command
    self.path = fileio.join(workdir, LOCK_NAME)
    self._held = None  # _FileLock or _ObjectLock while held

  def __enter__(self) -> "Lock":
    # Process 0 holds it. Asking jax for the process index only after a distributed start
    # keeps the backends (and their log lines) uninitialised until the lock is held.
    main = not jax.distributed.is_initialized() or jax.process_index() == 0
    if not main or self.path in _HELD:
      return self
    kind = _ObjectLock if fileio.is_url(self.path) else _FileLock
    self._held = kind(self.workdir, self.path, {**_holder(), "command": self.command})
    _HELD.add(self.path)
    return self

  def __exit__(self, *exc) -> None:
    """Removes the lock file (a finished run leaves the workdir as it found it) and lets go."""
    if self._held is None:
      return
    self._held.release()
    self._held = None
    _HELD.discard(self.path)


class _FileLock:
  """An exclusive `flock` on a local lock file."""

  def __init__(self, workdir: str, path: str, info: dict):
    self.path = path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise _in_use(workdir, holder) from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    self._fd = fd

  def release(self) -> None:
    try:
      os.remove(self.path)
    except OSError:
      pass
    os.close(self._fd)


class _ObjectLock:
  """A lock object in a bucket, kept alive by a heartbeat thread."""

  SETTLE_S = 1.0  # wait after writing, then read back: two runs that raced see one winner
  REREADS = 5  # an unparseable lock is read again this many times, REREAD_S apart
  REREAD_S = 0.05

  def __init__(self, workdir: str, path: str, info: dict):
    self.path, self.token = path, uuid.uuid4().hex
    current = self._current()
    if current and time.time() - current.get("heartbeat", 0) < STALE_S:
      raise _in_use(workdir, _describe(current))
    self.info = {**info, "token": self.token}
    self._write()
    time.sleep(self.SETTLE_S)
    winner = self._current() or {}
    if winner.get("token") != self.token:
      raise _in_use(workdir, _describe(winner))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
    self._thread.start()

  def _current(self) -> dict | None:
    return read_lock_object(self.path, self.REREADS, self.REREAD_S)

  def _write(self) -> None:
    fileio.write_atomic(self.path, json.dumps({**self.info, "heartbeat": time.time()}))

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        self._write()
      except OSError:  # a transient storage error: the next beat tries again
        pass

  def release(self) -> None:
    self._stop.set()
    self._thread.join()
    try:
      if (self._current() or {}).get("token") == self.token:
        fileio.remove(self.path)
    except OSError:
      pass


def _read_object(path: str) -> dict | None:
  try:
    return json.loads(fileio.read_text(path) or "{}")
  except FileNotFoundError:
    return None
  except ValueError:
    return {}


def read_lock_object(path: str, rereads: int = _ObjectLock.REREADS,
                     reread_s: float = _ObjectLock.REREAD_S) -> dict | None:
  """A bucket lock's content: None when there is none, {} when it does not parse. A read that
  does not parse is read again: a store may show an object half-written while the holder's
  heartbeat rewrites it (the GCS emulator does), and taking that for a dead lock would let a
  second run in. Junk that stays is what it was."""
  current = _read_object(path)
  for _ in range(rereads):
    if current != {}:
      break
    time.sleep(reread_s)
    current = _read_object(path)
  return current


def _describe(info: dict) -> str:
  if not info:
    return "holder unknown"
  text = f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"
  if "heartbeat" in info:
    text += f", alive {time.time() - info['heartbeat']:.0f} s ago"
  return text


def _read_holder(fd: int) -> str:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    info = json.loads(os.read(fd, 4096).decode() or "{}")
  except (OSError, ValueError):
    info = {}
  return _describe(info)
