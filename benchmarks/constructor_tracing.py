r"""What tracing a model's constructor costs, as flax writes it and as `ModelFn.init` traces it.

  python -m benchmarks.constructor_tracing [--rounds 3]

A run traces each model's constructor several times (its variables' shapes, the trainer's
jitted `init`, the restore targets of later stages), and every draw from `nnx.Rngs` inside a
trace used to ask a tracer for its `.sharding`, whose error message walks the whole trace so
far. This times, per model, `eval_shape` plus `jit(...).lower()` of the plain traced
constructor (`make(nnx.Rngs(key))`) against the same for `ModelFn.init`, which builds the model
under `jax.ensure_compile_time_eval` (modelfn.py); process CPU time, alternating rounds, the
median of the rounds after one warm-up round each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
from flax import nnx

from mlfd_jax import modelfn

MODELS = (("resnet18", 0.125), ("resnet50", 0.0625), ("convnext_atto", 0.2), ("vit_ti", 1 / 6))


def _plain_init(fn: modelfn.ModelFn):
  def init(key):
    _, params, state = nnx.split(fn._make(nnx.Rngs(key)), nnx.Param, ...)
    return {"params": nnx.to_pure_dict(params), "model_state": nnx.to_pure_dict(state)}
  return init


def _trace_seconds(init) -> float:
  key = jax.random.key(0)
  t = time.process_time()
  jax.eval_shape(init, key)
  jax.jit(init).lower(key)
  return time.process_time() - t


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args(argv)
  print(f"{'model, width':<20} {'plain (s)':>10} {'ModelFn.init (s)':>17} {'speed-up':>9}")
  for name, width in MODELS:
    times = {"plain": [], "modelfn": []}
    for r in range(args.rounds + 1):
      # A fresh ModelFn (and fresh functions) each round: nothing traced is reused.
      fn = modelfn.from_config({"name": name, "width": width}, num_classes=10, image_size=32)
      for kind, init in (("plain", _plain_init(fn)), ("modelfn", fn.init)):
        seconds = _trace_seconds(init)
        if r:  # round 0 warms up both (imports, trace-time constants' first compilations)
          times[kind].append(seconds)
    plain, ours = statistics.median(times["plain"]), statistics.median(times["modelfn"])
    label = f"{name} {width:.3g}"
    print(f"{label:<20} {plain:>10.2f} {ours:>17.2f} {plain / ours:>8.2f}x")


if __name__ == "__main__":
  main()
