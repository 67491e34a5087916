"""The run context: what every stage of one command shares, made once in `main.run`.

It holds the config, the workdir, the mesh, the datasets (each built once, on first use) and the
cache of restored frozen models, so that `stage=all` builds one mesh and each dataset once and
restores every teacher once, and a stage's functions take one `ctx` instead of a dozen
arguments.
"""

from __future__ import annotations

from typing import Any

from mlfd_jax import data, fileio, logs, parallel


class RunContext:
  """Config, workdir, mesh, datasets by name, and the frozen-model cache of one command."""

  def __init__(self, config, workdir: str, config_path: str = "",
               overrides: tuple[str, ...] = ()):
    from mlfd_jax.stages.frozen import FrozenModels  # local: frozen.py reads the context

    self.config, self.workdir, self.config_path = config, workdir, config_path
    self.overrides = tuple(overrides)  # the command line's --config.KEY=VALUE, as given
    self.names: tuple[str, ...] = tuple(config.datasets.keys())
    if not self.names:
      raise ValueError("config.datasets is empty: configure at least one dataset")
    self.mesh = parallel.make_mesh(int(config.get("num_devices", 0) or 0) or None,
                                   str(config.get("sharding", "replicated")),
                                   int(config.get("fsdp_size", 0) or 0))
    self.frozen = FrozenModels(self)
    self._datasets: dict[str, Any] = {}
    self._built: dict[tuple, Any] = {}

  def once(self, key: tuple, make):
    """`make()`, built once per key for this command: the model functions and joint teachers
    that specs are built from, which every spec of a run asks for again (the config is fixed
    for the context's life)."""
    if key not in self._built:
      self._built[key] = make()
    return self._built[key]

  # Datasets -------------------------------------------------------------------------------
  def dataset(self, name: str):
    """Dataset `name`, built on first use."""
    if name not in self.names:
      raise ValueError(f"unknown dataset {name!r}; configured: {', '.join(self.names)}")
    if name not in self._datasets:
      block = dict(self.config.datasets[name].to_dict())
      block.setdefault("name", name)
      self._datasets[name] = data.build_dataset(block)
    return self._datasets[name]

  def datasets(self) -> list:
    """Every dataset, in `names` order (which fixes joint-teacher head indices)."""
    return [self.dataset(n) for n in self.names]

  # Paths ------------------------------------------------------------------------------------
  def path(self, *parts: str) -> str:
    return fileio.join(self.workdir, *parts)

  def writer(self, directory: str):
    """The TensorBoard writer of the model trained in `WORKDIR/<directory>`."""
    return logs.make_writer(self.path("tensorboard", directory))

  def command(self, stage: str) -> str:
    """The command that runs `stage` on this workdir with this command's other overrides
    (quoted in error messages)."""
    cfg = self.config_path or "configs/NAME.py"
    kept = [o for o in self.overrides if not o.startswith("--config.stage=")]
    return " ".join(["python -m mlfd_jax.main", f"--config={cfg}", f"--workdir={self.workdir}",
                     *kept, f"--config.stage={stage}"])
