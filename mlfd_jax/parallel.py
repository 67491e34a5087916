"""Device mesh, shardings, and host batches -> global `jax.Array`s.

A 2-D mesh `(data, fsdp)`. Batches are split over all of its devices (both axes). The state of
what trains (parameters, BatchNorm statistics, optimizer state) is either replicated
(`sharding="replicated"`: the fsdp axis has size 1) or, with `sharding="fsdp"`, sharded over the
fsdp axis, ZeRO-3 style: each large tensor is split along its largest dimension that the axis
divides, small ones stay replicated, and XLA gathers a tensor where a step needs it whole. The
fsdp axis spans every device, or `fsdp_size` of them (a hybrid layout: state sharded within
groups of `fsdp_size` neighbouring devices, say one host's, and replicated across the groups).
Under `jax.jit` the same code runs unchanged on one device, eight fake CPU devices, a GPU box
or a TPU pod slice; BatchNorm statistics are global (XLA inserts the all-reduce). Frozen models
(teachers, joint teachers) are restored replicated.
"""

from __future__ import annotations

import itertools
import queue
import threading
from typing import Any, Iterable, Iterator

import jax
import numpy as np
# The coordination service's client: its barrier has a timeout of our choosing (jax's own
# array serialization waits on it the same way).
from jax._src import distributed as jax_distributed
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS, FSDP_AXIS = "data", "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # a batch is split over every device of the mesh
SHARDINGS = ("replicated", "fsdp")
FSDP_MIN_SIZE = 2 ** 12  # tensors with fewer elements stay replicated under fsdp


def make_mesh(num_devices: int | None = None, sharding: str = "replicated",
              fsdp_size: int = 0) -> jax.sharding.Mesh:
  """A `(data, fsdp)` mesh over all (or the first `num_devices`) devices: `(n, 1)` for
  replicated state, `(n / fsdp_size, fsdp_size)` for fsdp (`fsdp_size` 0: all n devices)."""
  if sharding not in SHARDINGS:
    raise ValueError(f"sharding={sharding!r} is not one of: {', '.join(SHARDINGS)}")
  devices = jax.devices()
  n = len(devices) if num_devices is None else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f"num_devices={n} but {len(devices)} devices are available")
  if sharding == "replicated" and fsdp_size not in (0, 1):
    raise ValueError(f"fsdp_size={fsdp_size} needs sharding='fsdp' (it is 'replicated')")
  size = fsdp_size or n
  if sharding == "fsdp" and (size < 1 or n % size):
    divisors = ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)
    raise ValueError(f"fsdp_size={fsdp_size} does not divide the {n} devices; use 0 (all) or "
                     f"one of: {divisors}")
  shape = (n, 1) if sharding == "replicated" else (n // size, size)
  return jax.make_mesh(shape, BATCH_AXES, devices=devices[:n],
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def data_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def leaf_sharding(shape: tuple[int, ...], mesh) -> NamedSharding:
  """Where one state tensor lives: split along its largest dimension the fsdp axis divides
  (the later one on a tie), or replicated if it is small or none divides."""
  n = mesh.shape[FSDP_AXIS]
  if n == 1 or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
    return replicated(mesh)
  fits = [(size, dim) for dim, size in enumerate(shape) if size % n == 0]
  if not fits:
    return replicated(mesh)
  dim = max(fits)[1]
  return NamedSharding(mesh, P(*([None] * dim), FSDP_AXIS))


def state_shardings(tree: Any, mesh) -> Any:
  """The sharding of every leaf of a (possibly abstract) state tree, by `leaf_sharding`."""
  return jax.tree.map(lambda x: leaf_sharding(tuple(x.shape), mesh), tree)


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


BARRIER_TIMEOUT_S = 3600
_barrier_ids = itertools.count(1)  # every process passes the same barriers in the same order


def barrier(name: str) -> None:
  """Waits until every process reaches `name` (after process 0 wrote a file the others read, or
  before a collective that follows work whose length differs between processes).

  It waits in the coordination service, up to BARRIER_TIMEOUT_S: a CPU collective (gloo) gives
  up after 30 s, and a process still compiling or loading data on a busy host can be later."""
  if jax.process_count() == 1:
    return
  client = jax_distributed.global_state.client
  client.wait_at_barrier(f"mlfd_jax/{next(_barrier_ids)}/{name}",
                         timeout_in_ms=BARRIER_TIMEOUT_S * 1000)


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
