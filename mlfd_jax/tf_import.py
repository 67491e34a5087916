"""The one place TensorFlow is first imported (tf.data sources).

Two things must happen at that import and nowhere else: TensorFlow must not take the GPUs or TPUs
JAX trains on, and its C++ log lines must not reach stderr, which a run keeps for warnings and
its one-line errors. `TF_CPP_MIN_LOG_LEVEL` silences them after start-up, but TensorFlow 2.21
prints its start-up INFO lines whatever it says; those are filtered out of what it writes to
stderr while importing, and every other line is passed on.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

# What TensorFlow writes to fd 2 on a healthy import: absl's pre-init notice and INFO records.
_START_UP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    r"STDERR|I\d{4} [\d:.]+ +\d+ \S+:\d+\] .*)$")


def tensorflow():
  """`import tensorflow`, the first time quietly and with the accelerators hidden from it."""
  if "tensorflow" in sys.modules:
    return sys.modules["tensorflow"]
  # Its C++ warnings too (a failing tf.data iterator logs one before the error that the input
  # pipeline turns into a one-line message); set the variable yourself to see them.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  with _native_stderr_filtered():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for kind in ("GPU", "TPU"):
    if tf.config.list_physical_devices(kind):
      tf.config.set_visible_devices([], kind)
  return tf


class _native_stderr_filtered:  # pylint: disable=invalid-name
  """Sends fd 2 to a temporary file for the block, then writes back what is not start-up noise."""

  def __enter__(self):
    sys.stderr.flush()
    self._saved = os.dup(2)
    self._file = tempfile.TemporaryFile(mode="w+b")
    os.dup2(self._file.fileno(), 2)
    return self

  def __exit__(self, *exc):
    sys.stderr.flush()
    os.dup2(self._saved, 2)
    os.close(self._saved)
    self._file.seek(0)
    text = self._file.read().decode(errors="replace")
    self._file.close()
    kept = [line for line in text.splitlines() if not _START_UP_NOISE.match(line)]
    if kept:
      sys.stderr.write("\n".join(kept) + "\n")
      sys.stderr.flush()
