"""`WORKDIR/results.json`: every trained model's accuracies, merged in place by each stage.

Schema (DESIGN.md): `{"config", "seed", "datasets": {name: {"num_classes", <model>: {val_top1,
test_top1, test_top5, ...}}}}`. A model that was not trained is absent, never zero. Entries
also carry `step` (the best-by-validation step they come from) and `last` (the same numbers for
the last step).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax

from mlfd_jax.checkpoint import write_json_atomic

FILENAME = "results.json"


def path(workdir: str) -> str:
  return os.path.join(workdir, FILENAME)


def load(workdir: str) -> dict[str, Any]:
  p = path(workdir)
  if not os.path.exists(p):
    return {"datasets": {}}
  with open(p) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{p} is not valid JSON ({e}); move it away to start a new one") from None


def record(workdir: str, *, config_path: str, seed: int, dataset: str, num_classes: int,
           model: str, entry: dict[str, Any]) -> None:
  """Sets `datasets[dataset][model] = entry` and writes the file atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  res = load(workdir)
  res["config"], res["seed"] = config_path, seed
  ds = res.setdefault("datasets", {}).setdefault(dataset, {})
  ds["num_classes"] = num_classes
  ds[model] = entry
  write_json_atomic(path(workdir), res)


def is_current(workdir: str, dataset: str, model: str, best_step: int | None,
               last_step: int | None, saved_at: int | None = None) -> bool:
  """Whether results.json already holds `model`'s numbers for these checkpoint steps, written
  at `saved_at` (a model retrained to the same step numbers is not current)."""
  entry = load(workdir).get("datasets", {}).get(dataset, {}).get(model)
  if not entry or last_step is None:
    return False
  return entry.get("step") == (best_step or last_step) and \
      entry.get("last", {}).get("step") == last_step and entry.get("saved_at") == saved_at
