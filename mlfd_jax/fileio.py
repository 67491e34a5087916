"""Files the pipeline reads and writes, on a local disk or in a bucket (`gs://...`) alike.

Every workdir and data path goes through `etils.epath`, the path library orbax's checkpoints
and jax's compilation cache already use, so results.json, config.json, probes, reports and the
workdir lock land beside the checkpoints wherever those are. Local paths are made absolute;
URLs are kept as given. An object store has no rename: there a write is one object upload,
which is already all-or-nothing, so "atomic" means the same on both.

`gs://` goes through gcsfs (fsspec), not TensorFlow's filesystem, with or without TensorFlow
installed (`EPATH_USE_TF=false` unless the user set it): one code path on every host, and no
TensorFlow import for a path. (TensorBoard event files are TensorFlow's own writes.)
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

os.environ.setdefault("EPATH_USE_TF", "false")
from etils import epath  # pylint: disable=g-import-not-at-top,wrong-import-position


def is_url(path: str | os.PathLike) -> bool:
  """Whether `path` names a non-local filesystem (`gs://bucket/...`)."""
  return "://" in os.fspath(path)


def expand(path: str | os.PathLike) -> str:
  """A local path with `~` expanded, or the URL without a trailing slash."""
  path = os.fspath(path)
  return path.rstrip("/") if is_url(path) else os.path.expanduser(path)


def resolve(path: str | os.PathLike) -> str:
  """An absolute local path, or the URL without a trailing slash."""
  path = expand(path)
  return path if is_url(path) else os.path.abspath(path)


def describe_error(e: OSError) -> str:
  """The reason an operating system or a bucket gave, in a few words (a client library's own
  error, such as an unreachable storage host, by its message, which names the host)."""
  if type(e).__module__ != "builtins" and str(e):
    return str(e).splitlines()[0][:200]
  if e.strerror:
    return e.strerror
  if isinstance(e, FileNotFoundError):
    return "no such bucket or path"
  if isinstance(e, PermissionError):
    return "permission denied"
  return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def join(*parts: str) -> str:
  return os.path.join(*parts)  # a URL is joined with "/" like a POSIX path


def path(p: str | os.PathLike) -> epath.Path:
  return epath.Path(p)


def exists(p: str) -> bool:
  return epath.Path(p).exists()


def isdir(p: str) -> bool:
  return epath.Path(p).is_dir()


def isfile(p: str) -> bool:
  q = epath.Path(p)
  return q.exists() and not q.is_dir()


def listdir(p: str) -> list[str]:
  return sorted(q.name for q in epath.Path(p).iterdir())


def makedirs(p: str) -> None:
  epath.Path(p).mkdir(parents=True, exist_ok=True)


def remove(p: str) -> None:
  epath.Path(p).unlink()


def rmtree(p: str) -> None:
  q = epath.Path(p)
  if q.exists():
    q.rmtree()


def read_text(p: str) -> str:
  return epath.Path(p).read_text()


def read_bytes(p: str) -> bytes:
  return epath.Path(p).read_bytes()


def write_atomic(p: str, data: str | bytes) -> None:
  """Writes a file so that a crash leaves either the old or the new one, never half of one."""
  if is_url(p):
    epath.Path(p).write_bytes(data.encode() if isinstance(data, str) else data)
    return
  tmp = f"{p}.tmp.{os.getpid()}"
  with open(tmp, "w" if isinstance(data, str) else "wb") as f:
    f.write(data)
  os.replace(tmp, p)


def write_json_atomic(p: str, obj: Any) -> None:
  write_atomic(p, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def savez_atomic(p: str, **arrays) -> None:
  """`np.savez` of `arrays` to `p`, written atomically."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_atomic(p, buf.getvalue())


def save_figure(fig, p: str, *, dpi: int) -> None:
  """A matplotlib figure as a PNG at `p`, written atomically."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  write_atomic(p, buf.getvalue())


def move_tree(src: str, dst: str) -> None:
  """Moves the directory `src` to `dst` (a rename on disk; a copy, then a delete, in a bucket,
  which has no directories to rename)."""
  if not is_url(src):
    os.replace(src, dst)
    return
  root = epath.Path(src)
  for top, _, files in root.walk():
    for name in files:
      rel = (top / name).relative_to(root)
      target = epath.Path(dst) / rel
      target.parent.mkdir(parents=True, exist_ok=True)
      (top / name).copy(target)
  root.rmtree()
