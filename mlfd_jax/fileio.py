"""Small files the pipeline writes beside its checkpoints (results.json, config.json)."""

from __future__ import annotations

import json
import os
from typing import Any


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON so that a crash leaves either the old or the new file, never half of one."""
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=False)
    f.write("\n")
  os.replace(tmp, path)
