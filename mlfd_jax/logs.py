"""Metric writers: TensorBoard event files, or plain log lines where TensorBoard is missing;
and `read_scalars`, which reads such files back.

The event files are written and read with the `tensorboard` package's protos and record
format, not through TensorFlow (nor TensorBoard's EventAccumulator, which imports it):
importing TensorFlow costs about 6 s of CPU per process (measured: a `configs/digits.py:tiny`
run took 40.5 s of user CPU with clu's TensorFlow writer, 32.6 s without), and nothing else
in a run on in-memory data needs it. Files go through `fileio`, so a `gs://` workdir gets them
too. Kept apart from the training loop so the compute core runs where TensorBoard is missing
(the GPU benchmark machine): `make_writer` falls back to logging only.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import time

import jax
from absl import logging

from mlfd_jax import fileio


class LogWriter:
  """Writes scalars to the log only."""

  def write_scalars(self, step, scalars):
    logging.debug("step %d: %s", step, scalars)

  def flush(self):
    pass

  def close(self):
    pass


class TensorBoardWriter:
  """Scalars to TensorBoard event files in `logdir`.

  Each `flush` writes the scalars since the previous one as a new, complete event file, named
  so that name order is time order (what TensorBoard reads a directory in). On local disk that
  file is appended to instead, one per writer; in a bucket an object is visible only once
  written whole, so appending to one would hide a run's curves until it ends.
  """

  def __init__(self, logdir: str):
    # Imported here: a host without TensorBoard gets a LogWriter from make_writer instead.
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.plugins.scalar import summary_v2  # pylint: disable=g-import-not-at-top
    from tensorboard.summary.writer import record_writer  # pylint: disable=g-import-not-at-top
    self._event, self._scalar_pb = event_pb2.Event, summary_v2.scalar_pb
    self._record_writer = record_writer.RecordWriter
    self._logdir = logdir
    self._pending: list[bytes] = []
    self._files = 0
    self._local = None  # the open local event file, once the first flush made it
    fileio.makedirs(logdir)

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    wall = time.time()
    for tag, value in scalars.items():
      event = self._event(wall_time=wall, step=int(step),
                          summary=self._scalar_pb(tag, float(value)))
      self._pending.append(event.SerializeToString())

  def _new_file_name(self) -> str:
    self._files += 1
    return fileio.join(self._logdir, f"events.out.tfevents.{int(time.time()):010d}."
                                     f"{socket.gethostname()}.{os.getpid()}.{self._files:06d}")

  def _records(self, with_header: bool) -> bytes:
    buf = io.BytesIO()
    writer = self._record_writer(buf)
    if with_header:
      writer.write(self._event(wall_time=time.time(),
                               file_version="brain.Event:2").SerializeToString())
    for record in self._pending:
      writer.write(record)
    return buf.getvalue()

  def flush(self) -> None:
    if not self._pending:
      return
    if fileio.is_url(self._logdir):
      fileio.write_atomic(self._new_file_name(), self._records(with_header=True))
    else:
      if self._local is None:
        self._local = open(self._new_file_name(), "ab")
        self._local.write(self._records(with_header=True))
      else:
        self._local.write(self._records(with_header=False))
      self._local.flush()
    self._pending.clear()

  def close(self) -> None:
    self.flush()
    if self._local is not None:
      self._local.close()
      self._local = None


def _split_records(data: bytes):
  """The records of a TFRecord file (length, its crc, payload, its crc), stopping at a
  truncated last record (a write cut short, e.g. by preemption); checksums are not checked."""
  pos = 0
  while pos + 12 <= len(data):
    (length,) = struct.unpack_from("<Q", data, pos)
    start, end = pos + 12, pos + 12 + length
    if end + 4 > len(data):
      return
    yield data[start:end]
    pos = end + 4


def read_scalars(event_dir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value)] in step order} of the scalars in one directory's event files, read
  in name order (time order); a step logged again (a resumed run repeating steps after its
  last checkpoint) keeps its latest value. Scalars stored as `simple_value` (TensorFlow 1
  writers) or as a one-element tensor (`tf.summary` 2, this module's writer) both count."""
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  by_tag: dict[str, dict[int, float]] = {}
  for name in sorted(fileio.listdir(event_dir)):
    if "tfevents" not in name:
      continue
    for record in _split_records(fileio.read_bytes(fileio.join(event_dir, name))):
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        if value.HasField("simple_value"):
          number = float(value.simple_value)
        elif value.HasField("tensor"):
          array = tensor_util.make_ndarray(value.tensor)
          if array.size != 1:
            continue
          number = float(array.reshape(()))
        else:
          continue
        by_tag.setdefault(value.tag, {})[int(event.step)] = number
  return {tag: sorted(steps.items()) for tag, steps in by_tag.items()}


def make_writer(logdir: str):
  """A `TensorBoardWriter` to `logdir` on process 0, else (other processes, or no TensorBoard
  installed) a `LogWriter`."""
  if jax.process_index() > 0:
    return LogWriter()
  try:
    return TensorBoardWriter(logdir)
  except ImportError:
    logging.warning("tensorboard is not installed: metrics go to the log only")
    return LogWriter()
