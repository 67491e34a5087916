"""Entry point: `python -m mlfd_jax.main --config=configs/NAME.py --workdir=DIR [--config.K=V]`.

Thin on purpose (as in the Flax examples): parse flags, keep TensorFlow off the accelerators,
start multi-host JAX if asked, log the topology, check the workdir, make the run context
(stages/context.py) and run `config.stage` with it.
Errors caused by the input (config, paths, data) end the run with one line naming the bad value.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mlfd_jax import cli
from mlfd_jax.stages import STAGES
from mlfd_jax.stages.context import RunContext

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, results.json.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host TPU/GPU launches).")
flags.mark_flags_as_required(["config", "workdir"])

# Errors that mean "the input is wrong", reported in one line; anything else is a bug and keeps
# its traceback. Set MLFD_TRACEBACK=1 to see tracebacks for input errors too.
INPUT_ERRORS = (ValueError, KeyError, TypeError, FileNotFoundError, NotADirectoryError,
                PermissionError)


def _hide_accelerators_from_tensorflow() -> None:
  try:
    import tensorflow as tf
  except ImportError:
    return
  tf.config.set_visible_devices([], "GPU")
  tf.config.set_visible_devices([], "TPU") if tf.config.list_physical_devices("TPU") else None


def check_workdir(workdir: str) -> str:
  """Creates `workdir` if needed and fails early, in one line, if it cannot be written."""
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{os.getpid()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f"workdir {workdir} is not writable ({e.strerror})") from None
  return workdir


def use_compilation_cache(workdir: str) -> None:
  """Caches XLA compilations on disk: identical programs (two teachers of one architecture,
  a rerun, a resume) compile once. `JAX_COMPILATION_CACHE_DIR` overrides the location."""
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))


def run(config, workdir: str, config_path: str = "") -> None:
  stage = STAGES.get(config.stage)
  workdir = check_workdir(workdir)
  use_compilation_cache(workdir)
  stage(RunContext(config, workdir, config_path))


def _quiet_library_info_logs() -> None:
  """Orbax logs every save/restore step at INFO; keep its warnings, drop the chatter."""
  def keep(record) -> bool:
    if "/orbax/" not in record.pathname:
      return True
    return (record.levelno >= logging.converter.STANDARD_WARNING
            and "read only" not in record.getMessage())

  logging.get_absl_handler().addFilter(keep)


def _fail(message) -> None:
  """Ends the run with the one-line error the README promises (exit code 2)."""
  print(f"mlfd_jax: error: {message}", file=sys.stderr)
  sys.exit(cli.EXIT_CODE)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing behind `cli.check_argv`, so a bad flag, config file, key, type or stage
  ends in one line before anything is imported or logged."""
  try:
    cli.check_argv(argv, STAGES.names())
    return flags.FLAGS(argv)
  except (cli.EntryError, flags.Error) as e:
    if os.environ.get("MLFD_TRACEBACK"):
      raise
    _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  _quiet_library_info_logs()
  _hide_accelerators_from_tensorflow()
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info("JAX process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  config_path = flags.FLAGS["config"].config_filename
  try:
    run(_CONFIG.value, _WORKDIR.value, config_path)
  except INPUT_ERRORS as e:
    if os.environ.get("MLFD_TRACEBACK"):
      raise
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    _fail(f"{msg} (MLFD_TRACEBACK=1 shows where)")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
