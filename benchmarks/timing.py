"""How a step is timed and what the machine's peak is, the same way for JAX and PyTorch.

A step is timed one call at a time, each call synchronised (the JAX side blocks on the step's
outputs; the PyTorch callables synchronise themselves), after warm-up calls; the median of the
timed calls is the step time, so a stray slow step (a GC pause, the other process on a shared
machine) does not move it. The peak that MFU is measured against is the best rate of a large
matmul in the same dtype, measured here, not a datasheet number.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import time
from typing import Callable


def median_ms(step: Callable[[], object], *, warmup: int, iters: int) -> float:
  """Median wall time (ms) of `iters` synchronised calls of `step`, after `warmup` calls."""
  for _ in range(warmup):
    step()
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  return 1e3 * statistics.median(times)


def jax_matmul_peak(dtype: str, n: int, repeats: int = 5) -> float:
  """FLOP/s of the best of `repeats` [n, n] @ [n, n] matmuls in `dtype` on JAX's default device."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.dtype(dtype))
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  best = min(_timed(lambda: matmul(a, b).block_until_ready()) for _ in range(repeats))
  return 2 * n ** 3 / best


def torch_matmul_peak(dtype: str, n: int, device: str, repeats: int = 5) -> float:
  """The same peak through PyTorch (its BLAS may be faster than XLA's on a CPU)."""
  import torch

  a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
  b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))

  def run():
    a @ b
    if device == "cuda":
      torch.cuda.synchronize()

  run()
  best = min(_timed(run) for _ in range(repeats))
  return 2 * n ** 3 / best


def _timed(fn: Callable[[], object]) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def cpu_description() -> dict[str, str]:
  """Model name and the vector-ISA flags that change XLA:CPU's code paths (lscpu), so a CPU
  figure is never compared with one from another kind of CPU."""
  out = {"machine": platform.machine(), "model": platform.processor() or "unknown", "isa": ""}
  try:
    text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
  except (OSError, subprocess.TimeoutExpired):
    return out
  model = re.search(r"^Model name:\s*(.+)$", text, re.M)
  flags = re.search(r"^Flags:\s*(.+)$", text, re.M)
  if model:
    out["model"] = model.group(1).strip()
  if flags:
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni")
    out["isa"] = " ".join(f for f in wanted if f in flags.group(1).split())
  return out


def write_json(path: str, result: dict) -> None:
  """A benchmark's result as JSON at `path`, its folder made if missing."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
