"""The command line's entry checks: every mistake in the flags becomes one line, not a traceback.

absl and ml_collections report a bad flag with a traceback from inside their parsers (an unknown
`--config.KEY`, a config file that does not exist or does not import) or with a last line that
does not name the value (`Pass --helpshort ...`). `check_argv` looks at the arguments first,
loading the config file the way ml_collections does, and raises `EntryError` with one line that
names the bad flag, key or value and what would be valid. `main.py` prints it as
`mlfd_jax: error: ...` and exits with code 2, before anything is imported or logged.
`run_tool` gives the project's smaller commands (report, budgets, curves) the same one line.
"""

from __future__ import annotations

import difflib
import glob
import importlib.util
import os
import sys
from typing import Any, Callable, Iterator

FLAGS = ("config", "workdir", "distributed", "coordinator_address", "num_processes", "process_id",
         "distributed_timeout")  # main.py's flags, in the order the help lists them
BOOL_FLAGS = ("distributed",)
FLAGS_TAKING_VALUES = tuple(f for f in FLAGS if f not in BOOL_FLAGS)
EXIT_CODE = 2
ERROR_PREFIX = "mlfd_jax: error: "  # how main.py begins its one-line error (tools find it in logs)


class EntryError(Exception):
  """A mistake on the command line, explained in one line."""


def _flag_items(argv: list[str]) -> Iterator[tuple[str, str | None]]:
  """(name, value or None) for each `--name=value`, `--name value` or `--name` in argv[1:]."""
  args, i = argv[1:], 0
  while i < len(args):
    arg = args[i]
    i += 1
    if not arg.startswith("-") or arg in ("-", "--"):
      raise EntryError(f"unexpected argument {arg!r}; the command takes only flags: "
                       f"--config=FILE[:ARGS] --workdir=DIR [--config.KEY=VALUE ...]")
    name, eq, value = arg.lstrip("-").partition("=")
    if not eq:
      takes_value = name in FLAGS_TAKING_VALUES or (
          name.startswith("config.") and i < len(args) and not args[i].startswith("--"))
      if takes_value and i < len(args):
        value, i = args[i], i + 1
      elif takes_value:
        raise EntryError(f"--{name} needs a value")
      else:
        value = None
    yield name, value


def _available_configs() -> str:
  found = sorted(glob.glob(os.path.join("configs", "*.py")))
  return ", ".join(p for p in found if not p.endswith("__init__.py")) or "none in ./configs"


def load_config(spec: str):
  """`configs/NAME.py[:ARGS]` -> the ConfigDict its `get_config(ARGS)` returns."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise EntryError(f"config file {path!r} does not exist; available: {_available_configs()}")
  try:
    module_spec = importlib.util.spec_from_file_location("mlfd_jax_entry_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  except Exception as e:  # any error while importing the user's file  # noqa: BLE001
    raise EntryError(f"config file {path!r} does not import: {type(e).__name__}: {e}") from None
  if not hasattr(module, "get_config"):
    raise EntryError(f"config file {path!r} has no get_config() function")
  try:
    return module.get_config(arg) if arg else module.get_config()
  except (ValueError, KeyError, TypeError) as e:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    raise EntryError(f"--config={spec}: {msg}") from None


def _flatten(tree, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    out[prefix + key] = value
    if hasattr(value, "items"):
      out.update(_flatten(value, f"{prefix}{key}."))
  return out


def _check_override(key: str, value: str | None, keys: dict[str, Any]) -> None:
  """An override must name an existing key and parse as that key's type."""
  if key not in keys:
    parent = key.rpartition(".")[0]
    close = difflib.get_close_matches(key, list(keys), n=3, cutoff=0.6)
    siblings = [k for k in keys if k.rpartition(".")[0] == parent]
    hint = f"closest: {', '.join(close)}" if close else \
        f"keys{' of ' + parent if parent else ''}: {', '.join(siblings)}"
    raise EntryError(f"unknown config key {key!r} (--config.{key}); {hint}")
  current = keys[key]
  if hasattr(current, "items"):
    children = [k for k in keys if k.rpartition(".")[0] == key]
    raise EntryError(f"--config.{key} is a block, not a value; set one of its keys: "
                     f"{', '.join(children)}")
  if value is None:
    if not isinstance(current, bool):
      raise EntryError(f"--config.{key} needs a value (it is a {type(current).__name__})")
    return
  kind = type(current)
  try:
    if kind is bool:
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError
    elif kind in (int, float):
      kind(value)
  except ValueError:
    article = "an" if kind is int else "a"
    raise EntryError(f"--config.{key}={value}: {key} is {article} {kind.__name__}; "
                     f"got {value!r}") from None


def overrides(argv: list[str]) -> tuple[str, ...]:
  """The `--config.KEY=VALUE` overrides in `argv`, each as one `--config.KEY=VALUE` (or
  `--config.KEY` for a bare bool), in the order given: what results.json records beside the
  config file, and what the commands suggested in error messages repeat."""
  return tuple(f"--{name}" if value is None else f"--{name}={value}"
               for name, value in _flag_items(argv) if name.startswith("config."))


def config_first(argv: list[str]) -> list[str]:
  """`argv` with `--config=FILE` (or `--config FILE`) moved before every `--config.KEY`
  override: ml_collections' parser needs the file first, a user should not have to know."""
  args = argv[1:]
  for i, arg in enumerate(args):
    if arg.startswith("--config="):
      return [argv[0], arg, *args[:i], *args[i + 1:]]
    if arg == "--config" and i + 1 < len(args):
      return [argv[0], *args[i:i + 2], *args[:i], *args[i + 2:]]
  return list(argv)


def check_argv(argv: list[str], valid_stages: list[str]) -> None:
  """Raises EntryError for the first mistake in `argv`; returns if the flags look right."""
  given, overrides, wants_help = {}, [], False
  for name, value in _flag_items(argv):
    if name in ("help", "helpshort", "helpfull"):
      wants_help = True
    elif name.startswith("config."):
      overrides.append((name[len("config."):], value))
    elif name in FLAGS_TAKING_VALUES:
      given[name] = value
    elif name not in BOOL_FLAGS and name.removeprefix("no") not in BOOL_FLAGS:
      valid = ", ".join(f"--{f}" for f in FLAGS)
      raise EntryError(f"unknown flag --{name}; valid: {valid}, --config.KEY=VALUE")
  if wants_help:
    return  # absl prints the help
  for flag, example in (("config", "configs/digits.py"), ("workdir", "runs/digits")):
    if not given.get(flag):
      raise EntryError(f"--{flag} is required (e.g. --{flag}={example})")
  keys = _flatten(load_config(given["config"]))
  for key, value in overrides:
    _check_override(key, value, keys)
  stage = dict(overrides).get("stage", keys.get("stage"))
  if stage not in valid_stages:
    raise EntryError(f"unknown stage {stage!r}; valid: {', '.join(sorted(valid_stages))}")


def _tool_error(e: Exception) -> str:
  """One line for what stopped a tool: its own message, or the file the OS refused and why."""
  if isinstance(e, OSError) and e.filename is not None:
    from mlfd_jax import fileio  # pylint: disable=import-outside-toplevel
    return f"{e.filename}: {fileio.describe_error(e)}"
  if isinstance(e, KeyError) and e.args:
    return str(e.args[0])
  return str(e).splitlines()[0] if str(e) else type(e).__name__


def run_tool(prog: str, body: Callable[[], None]) -> int:
  """Runs a command's `body`; a missing input, a bad value or config file, or an output the OS
  refuses ends in one stderr line `PROG: error: ...` and exit code 2 (MLFD_TRACEBACK=1 raises
  instead)."""
  try:
    body()
  except (OSError, ValueError, KeyError, EntryError) as e:
    if os.environ.get("MLFD_TRACEBACK"):
      raise
    sys.stderr.write(f"{prog}: error: {_tool_error(e)}\n")
    return EXIT_CODE
  return 0
