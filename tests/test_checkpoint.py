"""How `Checkpoints` writes replicated arrays: from one replica when each replica's share would be
under 1 MiB, split across the replicas above it, and restored the same either way."""

import jax
import jax.numpy as jnp
import numpy as np
from orbax.checkpoint._src.serialization import replica_slices

from mlfd_jax import checkpoint


def test_small_replicated_arrays_are_written_from_one_replica(tmp_path, monkeypatch):
  devices = jax.devices()
  assert len(devices) == 8  # conftest's fake CPU devices
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  small = jax.device_put(jnp.arange(256, dtype=jnp.float32), replicated)  # 1 KiB
  large = jax.device_put(jnp.arange(2 << 20, dtype=jnp.float32), replicated)  # 1 MiB a replica

  sliced = []  # element counts of the arrays orbax split across replicas
  original = replica_slices.ReplicaSlice.data

  def data(self):
    if self.slice_args is not None:
      sliced.append(self.unsliced_data.size)
    return original(self)

  monkeypatch.setattr(replica_slices.ReplicaSlice, "data", data)
  ckpt = checkpoint.Checkpoints(str(tmp_path / "ckpt"))
  ckpt.save(1, {"small": small, "large": large}, {"step": jnp.int32(1)},
            metrics={checkpoint.VAL_METRIC: 0.5})

  assert sliced == [large.size] * 8, sliced
  restored = ckpt.restore_model(1, checkpoint.abstract_like(
      {"small": small, "large": large}, replicated))
  np.testing.assert_array_equal(restored["small"], small)
  np.testing.assert_array_equal(restored["large"], large)
  ckpt.close()


def test_replacing_orbax_array_handler_logs_nothing(caplog):
  """The CLI's stderr holds warnings and its one-line errors only: orbax's "overriding" warning
  must not be among them."""
  with caplog.at_level("INFO"):
    checkpoint._register_array_handler.__wrapped__()
  assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_opening_a_checkpoint_read_only_logs_nothing(tmp_path, caplog):
  """Evaluation, the students' frozen models and `classifier.load` open checkpoints read-only on
  purpose; orbax's "Given directory is read only" warning would reach the CLI's stderr."""
  ckpt = checkpoint.Checkpoints(str(tmp_path / "ckpt"))
  ckpt.save(1, {"w": jnp.ones(4)}, {"step": jnp.int32(1)}, metrics={checkpoint.VAL_METRIC: 0.5})
  ckpt.close()
  with caplog.at_level("WARNING"):
    reader = checkpoint.Checkpoints(str(tmp_path / "ckpt"), read_only=True)
  assert not caplog.records, [r.getMessage() for r in caplog.records]
  assert reader.manager.latest_step() == 1
