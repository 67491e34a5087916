"""Entry point: `python -m mlfd_jax.main --config=configs/NAME.py --workdir=DIR [--config.K=V]`.

Thin on purpose (as in the Flax examples): check and parse the flags (cli.py), start multi-host
JAX if asked, check and lock the workdir (workdir.py), send the log to stdout, log the topology,
make the run context (stages/context.py) and run `config.stage` with it.
Errors caused by the input (flags, config, paths, data, a busy workdir) end the run with one line
naming the bad value.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mlfd_jax import checkpoint, cli, distributed, train
from mlfd_jax import workdir as workdir_lib
from mlfd_jax.stages import STAGES
from mlfd_jax.stages.context import RunContext

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, results.json.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join a multi-process run (multi-host TPU/GPU launches): where, from "
    "SLURM, Open MPI or the TPU VM, else from the three flags below.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "With --distributed: HOST:PORT of process 0 (manual launches).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --distributed: how many processes the run has.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --distributed: this process's index, 0..num_processes-1.")
_JOIN_TIMEOUT = flags.DEFINE_float(
    "distributed_timeout", 300.0, "With --distributed: seconds to wait for the other processes.")
flags.mark_flags_as_required(["config", "workdir"])

# Errors that mean "the input is wrong", reported in one line; anything else is a bug and keeps
# its traceback. Set MLFD_TRACEBACK=1 to see tracebacks for input errors too.
INPUT_ERRORS = (ValueError, KeyError, TypeError, FileNotFoundError, NotADirectoryError,
                PermissionError, workdir_lib.WorkdirInUse, train.NonFinite,
                checkpoint.CheckpointWriteError, distributed.JoinError)


def run(config, workdir: str, config_path: str = "", overrides: tuple[str, ...] = ()) -> None:
  stage = STAGES.get(config.stage)
  path = workdir_lib.check_writable(workdir)
  with workdir_lib.Lock(path, command=" ".join(sys.argv)), train.STOP:
    workdir_lib.use_compilation_cache(path)
    stage(RunContext(config, path, config_path, overrides))


def _route_logs() -> None:
  """The run's log goes to stdout; warnings also to stderr, which otherwise holds only what went
  wrong (one `mlfd_jax: error:` line for a bad input), so `> run.log` keeps the log and the
  terminal shows the problems."""
  logging.get_absl_handler().python_handler.stream = sys.stdout
  flags.FLAGS.stderrthreshold = "warning"


def _quiet_library_info_logs() -> None:
  """Orbax logs every save/restore step at INFO, gcsfs every file it opens in a bucket; keep
  their warnings, drop the chatter. Also drop what the run reports itself, in one line: the
  asyncio copies of a failed save's error, gcsfs's last retry of a request that fails, and
  TFDS's warning on a dataset folder without its metadata (a dataset never prepared), and JAX's
  note, first in every CPU or GPU run's log, that it found no TPU library: the run's first own
  line names the platform it uses (a TPU library that is there but fails is still logged).
  gcsfs's fallback from its bucket-layout lookup goes to the log only."""
  def keep(record) -> bool:
    if "has no dataset_info.json" in record.getMessage():
      return False
    if record.name.endswith("xla_bridge") and _no_tpu_library(record.getMessage()):
      return False
    if record.name == "asyncio" and "/orbax/" in record.getMessage():
      return False  # a failed save's writer tasks, reported once as CheckpointWriteError
    if record.name.split(".")[0] in ("gcsfs", "fsspec"):
      if "falling back to gcsfilesystem" in record.getMessage().lower():
        # gcsfs could not ask the bucket's layout (no credentials for that API, no route) and
        # uses the plain client, which serves every bucket we write: a fact for the log, not a
        # problem for stderr.
        record.levelno, record.levelname = logging.converter.STANDARD_INFO, "INFO"
        return True
      if record.getMessage().startswith("_request out of retries"):
        return False  # the error is raised to the run, which reports it in one line
      return record.levelno >= logging.converter.STANDARD_WARNING
    if "/orbax/" not in record.pathname:
      return True
    # (A preemption save has no validation metric, by design: orbax warns about that.)
    return (record.levelno >= logging.converter.STANDARD_WARNING
            and "did not provide metrics" not in record.getMessage())

  logging.get_absl_handler().addFilter(keep)


def _no_tpu_library(message: str) -> bool:
  """JAX's "Unable to initialize backend 'tpu'" for a host that has no libtpu at all."""
  return (message.startswith("Unable to initialize backend 'tpu'") and "libtpu" in message
          and "cannot open shared object file" in message)


def _say(line: str) -> None:
  """One line to stderr in one write: `print` writes the text and the newline separately, and a
  library's writer thread printing a traceback in between would glue its text onto our line."""
  sys.stderr.write(line + "\n")
  sys.stderr.flush()


def _fail(message) -> None:
  """Ends the run with the one-line error the README promises (exit code 2)."""
  _say(cli.ERROR_PREFIX + str(message))
  sys.exit(cli.EXIT_CODE)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing behind `cli.check_argv`, so a bad flag, config file, key, type or stage
  ends in one line before anything is imported or logged."""
  try:
    cli.check_argv(argv, STAGES.names())
    # ml_collections reads the overrides from sys.argv itself, so the reordering goes there too.
    sys.argv[:] = argv = cli.config_first(argv)
    return flags.FLAGS(argv)
  except (cli.EntryError, flags.Error) as e:
    if os.environ.get("MLFD_TRACEBACK"):
      raise
    _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)


def _join_if_distributed() -> None:
  """Joins the multi-process run when asked; a process that cannot ends with one line."""
  where = dict(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
               process_id=_PROCESS_ID.value)
  distributed.check_flags(distributed=_DISTRIBUTED.value, timeout_s=_JOIN_TIMEOUT.value, **where)
  if not _DISTRIBUTED.value:
    return

  def give_up(message: str) -> None:  # from the watchdog thread, while JAX still waits
    _say(cli.ERROR_PREFIX + str(message))
    os._exit(cli.EXIT_CODE)  # pylint: disable=protected-access  # the main thread is in C++

  distributed.join(**where, timeout_s=_JOIN_TIMEOUT.value, on_timeout=give_up)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  _route_logs()
  _quiet_library_info_logs()
  try:
    _join_if_distributed()
    # The workdir is checked and locked before anything is imported or logged, so a second run
    # on it fails with one line and nothing else.
    path = workdir_lib.check_writable(_WORKDIR.value)
    with workdir_lib.Lock(path, command=" ".join(sys.argv)):
      logging.info("JAX process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
                   jax.process_count(), jax.local_device_count(), jax.device_count(),
                   jax.devices()[0].platform)
      run(_CONFIG.value, path, flags.FLAGS["config"].config_filename, cli.overrides(sys.argv))
  except INPUT_ERRORS as e:
    if os.environ.get("MLFD_TRACEBACK"):
      raise
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    _fail(f"{msg} (MLFD_TRACEBACK=1 shows where)")
  except train.Preempted as e:
    _say(f"mlfd_jax: {e}")
    sys.exit(128 + e.signum)  # the shell's code for death by that signal


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
