"""Metric writers: TensorBoard through clu where available, plain log lines otherwise.

Kept apart from the training loop so the compute core runs where clu/TensorFlow are missing
(the GPU benchmark machine): `make_writer` falls back to logging only.
"""

from __future__ import annotations

import jax
from absl import logging

from mlfd_jax import tf_import


class LogWriter:
  """Writes scalars to the log only."""

  def write_scalars(self, step, scalars):
    logging.debug("step %d: %s", step, scalars)

  def flush(self):
    pass

  def close(self):
    pass


def make_writer(logdir: str):
  """A clu writer to TensorBoard event files in `logdir` (process 0), or a `LogWriter`."""
  try:
    tf_import.tensorflow()  # clu's writer imports it: quietly, and off the accelerators
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning("clu is not installed: metrics go to the log only")
    return LogWriter()
  return metric_writers.create_default_writer(logdir, just_logging=jax.process_index() > 0,
                                              asynchronous=False)
