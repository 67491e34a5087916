"""Orbax checkpoints of what trains: one `CheckpointManager` directory per trained model.

A directory `WORKDIR/<stage>/<name>/` holds numbered step folders (each saved atomically by
orbax: written to a temporary folder, then renamed) and `config.json`, the config that made
them. Each step holds two items of plain nested dicts, so a user can restore them with plain
orbax calls: `model` = `{params, model_state}` (all that evaluation or a later stage needs) and
`train` = `{step, opt_state}` (only what resuming needs). Kept: the latest `keep` steps and the best step by
validation top-1. Restores go into abstract targets (`jax.ShapeDtypeStruct` with the caller's
shardings), so a checkpoint written on 8 devices restores on 1 and vice versa.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from mlfd_jax import fileio

try:  # orbax >= 0.12 exports neither: the store its default jax.Array handler is built with, and
  # the registry's `add` that can replace a handler without a warning on stderr
  from orbax.checkpoint._src.metadata import array_metadata_store
  from orbax.checkpoint._src.serialization import type_handler_registry
except ImportError:  # an older orbax keeps its own handler (see _register_array_handler)
  array_metadata_store = type_handler_registry = None

VAL_METRIC = "val_top1"
# Replica-parallel writing for arrays of at least this many bytes a replica, single-replica below.
MIN_REPLICA_SLICE_BYTES = 1 << 20


class CheckpointWriteError(OSError):
  """A checkpoint could not be written: the storage's fault, reported as an input error."""


def _write_failure(e: Exception) -> str:
  """The operating system's reason inside a tensorstore write error, else the error's first line."""
  m = re.search(r"Failed to write [^:]*: (.+?) \[os_error_code", str(e))
  if m:
    return m.group(1)
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


@functools.cache
def _register_array_handler() -> None:
  """Writes a replicated array from one replica unless each replica's share is >= 1 MiB.

  Off GPU, orbax splits every replicated array's write across its replicas, one eager slice per
  device; for a model's small arrays (biases, norms, small kernels) the slicing costs far more than
  the parallel write saves (a ~70-array tiny model over 8 devices: 1.0 s a save, 0.4 s with this).
  Large arrays keep the parallel write. Otherwise orbax's default handler, with its metadata store.
  On an orbax older than 0.12 nothing changes.
  """
  if type_handler_registry is None:
    logging.info("orbax %s: replicated arrays are written across replicas whatever their size",
                 ocp.__version__)
    return
  type_handler_registry.GLOBAL_TYPE_HANDLER_REGISTRY.add(
      jax.Array, ocp.type_handlers.ArrayHandler(
          array_metadata_store=array_metadata_store.Store(),
          min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES),
      override=True, ignore_warnings=True)


@contextlib.contextmanager
def _without_read_only_notice():
  """Orbax warns that a directory opened read-only is read only, which is what was asked."""
  def keep(record) -> bool:
    return "is read only" not in record.getMessage()
  logger = logging.get_absl_logger()
  logger.addFilter(keep)
  try:
    yield
  finally:
    logger.removeFilter(keep)


class Checkpoints:
  """A thin wrapper over `ocp.CheckpointManager` with the project's policies."""

  def __init__(self, directory: str, *, keep: int = 2, read_only: bool = False):
    _register_array_handler()
    self.directory = fileio.resolve(directory)
    policies = ocp.checkpoint_managers
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                             cleanup_tmp_directories=False)
      with _without_read_only_notice():
        self.manager = ocp.CheckpointManager(self.directory, options=options)
      return
    options = ocp.CheckpointManagerOptions(
        # best_fn makes orbax write each step's metrics next to it (read back by best_step).
        best_fn=lambda m: m[VAL_METRIC], best_mode="max",
        # The loop decides when to save (at each evaluation and at the end).
        save_decision_policy=policies.ContinuousCheckpointingPolicy(),
        preservation_policy=policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=lambda m: m[VAL_METRIC], n=1,
                           keep_checkpoints_without_metrics=False),
        ]),
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  # Queries --------------------------------------------------------------------------------
  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def metrics(self, step: int) -> dict[str, float] | None:
    return self.manager.metrics(step)

  def is_finished(self, total_steps: int) -> bool:
    """Whether training reached `total_steps`: the one test of "is this model done?"."""
    latest = self.latest_step()
    return latest is not None and latest >= total_steps

  def best_step(self) -> int | None:
    """The kept step with the highest validation top-1 (ties: the later step)."""
    scored = [(m[VAL_METRIC], s) for s in self.steps()
              if (m := self.metrics(s)) and VAL_METRIC in m]
    return max(scored)[1] if scored else None

  def saved_at(self, step: int) -> int | None:
    """When step `step` was committed (ns since the epoch, from orbax's metadata beside it):
    tells a retrained model's checkpoint from an earlier one of the same step number."""
    path = fileio.join(self.directory, str(step), "_CHECKPOINT_METADATA")
    try:
      return json.loads(fileio.read_text(path)).get("commit_timestamp_nsecs")
    except (OSError, ValueError):
      return None

  # Save / restore ---------------------------------------------------------------------------
  def save(self, step: int, model: Any, train: Any,
           metrics: dict[str, float] | None = None) -> None:
    """Saves `step`; a write that fails (a full disk, a quota, a bucket that refuses it) leaves
    no partial step behind and raises `CheckpointWriteError`, the steps before it untouched."""
    try:
      self.manager.save(step, args=ocp.args.Composite(model=ocp.args.StandardSave(model),
                                                      train=ocp.args.StandardSave(train)),
                        metrics=metrics, force=True)
      self.manager.wait_until_finished()
    except Exception as e:  # tensorstore and orbax raise ValueError, OSError, ...  # noqa: BLE001
      try:  # let orbax's writer threads end now, not while the interpreter shuts down
        self.manager.close()
      except Exception:  # noqa: BLE001  # they fail the same way; the first error is reported
        pass
      if jax.process_index() == 0:
        for name in fileio.listdir(self.directory):
          if name.startswith(f"{step}.orbax-checkpoint-tmp"):
            try:
              fileio.rmtree(fileio.join(self.directory, name))
            except OSError:
              pass
      raise CheckpointWriteError(f"cannot write checkpoint step {step} to {self.directory} "
                                 f"({_write_failure(e)}); the steps saved before it are kept"
                                 ) from e

  def restore_model(self, step: int, abstract_model: Any) -> Any:
    """Restores the `model` item of `step` into the structure, dtypes and shardings given."""
    out = self.manager.restore(
        step, args=ocp.args.Composite(model=ocp.args.StandardRestore(abstract_model)))
    return out["model"]

  def restore(self, step: int, abstract_model: Any, abstract_train: Any) -> tuple[Any, Any]:
    out = self.manager.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(abstract_model),
        train=ocp.args.StandardRestore(abstract_train)))
    return out["model"], out["train"]

  def restore_latest_good(self, abstract_model: Any, abstract_train: Any
                          ) -> tuple[int, Any, Any] | None:
    """(step, model, train) of the latest step that restores, or None if none does.

    A step that fails to restore (truncated or partly deleted files) is reported, moved out of
    the manager's sight to `<directory>.damaged/<step>` (kept, never deleted), and the next
    older step is tried."""
    for step in reversed(self.steps()):
      try:
        return (step, *self.restore(step, abstract_model, abstract_train))
      except Exception as e:  # orbax/tensorstore raise many kinds for a damaged step  # noqa: BLE001
        logging.warning("checkpoint step %d in %s does not restore (%s: %s); moving it to %s "
                        "and falling back to the previous step", step, self.directory,
                        type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "",
                        self.damaged_dir)
        self._set_aside(step)
    return None

  @property
  def damaged_dir(self) -> str:
    return self.directory + ".damaged"

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      fileio.makedirs(self.damaged_dir)
      target = fileio.join(self.damaged_dir, str(step))
      while fileio.exists(target):
        target += "_"
      fileio.move_tree(fileio.join(self.directory, str(step)), target)
    multihost_utils.sync_global_devices(f"set aside {self.directory}/{step}") \
        if jax.process_count() > 1 else None
    self.manager.reload()

  def close(self) -> None:
    self.manager.close()

  # The config beside the checkpoints ---------------------------------------------------------
  def write_config(self, config_dict: dict) -> None:
    if jax.process_index() == 0:
      fileio.write_json_atomic(fileio.join(self.directory, "config.json"), config_dict)

  def read_config(self) -> dict | None:
    path = fileio.join(self.directory, "config.json")
    if not fileio.exists(path):
      return None
    return json.loads(fileio.read_text(path))


def meta_mismatch(stored: dict | None, meta: dict) -> tuple[str, Any, Any] | None:
  """The first `(key, stored value, wanted value)` that differs, compared as JSON, or None."""
  stored = (stored or {}).get("meta", {})
  wanted = json.loads(json.dumps(meta))
  for key, value in wanted.items():
    if key in stored and stored[key] != value:
      return key, stored[key], value
  return None


def abstract_like(tree: Any, sharding) -> Any:
  """`jax.ShapeDtypeStruct`s of a (possibly abstract) tree, all with `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
