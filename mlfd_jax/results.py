"""`WORKDIR/results.json`: every trained model's accuracies, merged in place by each stage.

Schema (docs/design.md): `{"config", "seed", "datasets": {name: {"num_classes", <model>: {val_top1,
test_top1, test_top5, ...}}}}`. A model that was not trained is absent, never zero. Entries
also carry `step` (the best-by-validation step they come from) and `last` (the same numbers for
the last step), and `machine`: what the numbers depend on besides the config and the seed.

Runs are bit-for-bit repeatable on one machine, but XLA:CPU's arithmetic depends on the CPU's
instruction set (AVX-512 or not) and on how many cores the process may use, and training
amplifies a last-bit difference into a different model: compare numbers across machines only as
you would compare two seeds (docs/results.md measures how far apart they land).
"""

from __future__ import annotations

import functools
import json
import os
import platform
from collections.abc import Sequence
from typing import Any

import jax

from mlfd_jax import fileio

FILENAME = "results.json"


def path(workdir: str) -> str:
  return fileio.join(workdir, FILENAME)


def load(workdir: str) -> dict[str, Any]:
  p = path(workdir)
  if not fileio.exists(p):
    return {"datasets": {}}
  try:
    return json.loads(fileio.read_text(p))
  except json.JSONDecodeError as e:
    raise ValueError(f"{p} is not valid JSON ({e}); move it away to start a new one") from None


@functools.cache
def machine() -> dict[str, Any]:
  """The facts that change XLA's floating-point results: backend, device, CPU model and vector
  extensions, usable cores, jax/jaxlib versions, XLA_FLAGS."""
  import jaxlib
  cpu, flags = platform.processor(), set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not cpu:
          cpu = value.strip()
        elif key.strip() == "flags":
          flags = set(value.split())
          break
  except OSError:
    pass
  isa = [x for x in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if x in flags]
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  device = jax.devices()[0]
  return {"backend": device.platform, "device": device.device_kind,
          "devices": jax.device_count(), "processes": jax.process_count(), "cpu": cpu,
          "cpu_isa": isa, "cores": cores, "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "xla_flags": os.environ.get("XLA_FLAGS", "")}


def record(workdir: str, *, config_path: str, seed: int, dataset: str, num_classes: int,
           model: str, entry: dict[str, Any], order: Sequence[str]) -> None:
  """Sets `datasets[dataset][model] = entry` and writes the file atomically (process 0 only).

  `datasets` is kept in `order` (the config's), whichever dataset was trained first: lanes
  train a seed's teachers out of order, and reports list datasets as their files do."""
  if jax.process_index() != 0:
    return
  res = load(workdir)
  res["config"], res["seed"] = config_path, seed
  by_name = res.setdefault("datasets", {})
  ds = by_name.setdefault(dataset, {})
  ds["num_classes"] = num_classes
  ds[model] = {**entry, "machine": machine()}
  rank = {name: i for i, name in enumerate(order)}
  res["datasets"] = dict(sorted(by_name.items(), key=lambda kv: rank.get(kv[0], len(rank))))
  fileio.write_json_atomic(path(workdir), res)


def is_current(workdir: str, dataset: str, model: str, best_step: int | None,
               last_step: int | None, saved_at: int | None = None) -> bool:
  """Whether results.json already holds `model`'s numbers for these checkpoint steps, written
  at `saved_at` (a model retrained to the same step numbers is not current)."""
  entry = load(workdir).get("datasets", {}).get(dataset, {}).get(model)
  if not entry or last_step is None:
    return False
  return entry.get("step") == (best_step or last_step) and \
      entry.get("last", {}).get("step") == last_step and entry.get("saved_at") == saved_at
