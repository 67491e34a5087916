"""Device mesh, shardings, and host batches -> global `jax.Array`s.

One `data` mesh axis: batches are split along it, state is replicated. Under `jax.jit` this makes
BatchNorm statistics global (XLA inserts the all-reduce), so the same code runs unchanged on one
device, eight fake CPU devices, a GPU box or a TPU pod slice.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh over all (or the first `num_devices`) devices."""
  devices = jax.devices()
  n = len(devices) if num_devices is None else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f"num_devices={n} but {len(devices)} devices are available")
  return jax.make_mesh((n,), (DATA_AXIS,), devices=devices[:n],
                       axis_types=(jax.sharding.AxisType.Auto,))


def data_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh, key: str = "batch_size") -> None:
  """Global batches must split evenly over devices and processes."""
  n = mesh.devices.size
  if batch_size <= 0:
    raise ValueError(f"{key}={batch_size}: a batch needs at least one example per device; use "
                     f"a positive multiple of the {n} devices of the mesh")
  if batch_size % n:
    raise ValueError(f"{key}={batch_size} is not divisible by the {n} devices of the mesh; "
                     f"use a positive multiple of {n}")
  if batch_size % jax.process_count():
    raise ValueError(f"{key}={batch_size} is not divisible by the {jax.process_count()} processes")


def to_global(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """This process's rows of a batch -> one global array per key, sharded along `data`."""
  sharding = data_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def agree(flags):
  """Process 0's value of a host-side decision (a bool, or a list of bools) on every process.

  Whether a checkpoint directory or a results entry exists is read from the file system, which
  process 0 may have just written; every process must still take the same branch around the
  collective work that follows, or the processes deadlock or fail at their next barrier."""
  if jax.process_count() == 1:
    return flags
  out = multihost_utils.broadcast_one_to_all(np.asarray(flags, bool))
  return out.tolist() if isinstance(flags, (list, tuple)) else bool(out)


def any_process(flag: bool) -> bool:
  """Whether `flag` is true on any process (a signal may reach only some of them)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, bool))))


def barrier(name: str) -> None:
  """Waits until every process reaches `name` (after process 0 wrote a file the others read)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def replicated_key(seed: int, mesh) -> jax.Array:
  """A PRNG key on every device of the mesh. Made by a jitted function: `device_put` of a key
  onto devices of other processes fails on a multi-host mesh."""
  return jax.jit(jax.random.key, out_shardings=replicated(mesh))(seed)


def prefetch(batches: Iterable[dict[str, np.ndarray]], mesh, size: int = 2
             ) -> Iterator[dict[str, jax.Array]]:
  """Builds global arrays for the next `size` batches in a background thread.

  Overlaps host-side batch assembly and host->device copies with the running step.
  """
  q: queue.Queue = queue.Queue(maxsize=size)
  sentinel = object()
  stop = threading.Event()

  def producer():
    try:
      for b in batches:
        if stop.is_set():
          return
        q.put(to_global(b, mesh))
      q.put(sentinel)
    except BaseException as e:  # surfaced in the consumer
      q.put(e)

  t = threading.Thread(target=producer, daemon=True)
  t.start()
  try:
    while True:
      item = q.get()
      if item is sentinel:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    # Unblock a producer waiting on a full queue.
    while not q.empty():
      q.get_nowait()
