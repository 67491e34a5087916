"""One module per stage; `STAGES` maps `config.stage` to its `run(config, workdir, ...)`."""

from mlfd_jax.registry import Registry

STAGES: Registry = Registry("stage")


def _register_all():
  # Importing a stage module registers it.
  from mlfd_jax.stages import baselines, evaluate, joint, students, teachers  # noqa: F401


_register_all()
