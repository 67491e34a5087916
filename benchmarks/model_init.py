r"""What drawing a model's initial variables costs: tracing its constructor, compiling `init`.

  python -m benchmarks.model_init [--rounds 3]

A run traces each model's constructor several times (its variables' shapes, the trainer's
jitted `init`, the restore targets of later stages), and every draw from `nnx.Rngs` inside a
trace used to ask a tracer for its `.sharding`, whose error message walks the whole trace so
far. This times, per model, `eval_shape` plus `jit(...).lower()` of the plain traced
constructor (`make(nnx.Rngs(key))`) against the same for `ModelFn.init`, which builds the model
under `jax.ensure_compile_time_eval` (modelfn.py); process CPU time, alternating rounds, the
median of the rounds after one warm-up round each.

Then it compiles each model's `init` (lowered once) with XLA's default options and with the
options `Trainer.init` uses on CPU (`train.INIT_COMPILER_OPTIONS`), alternately, and checks that
both draw the same bits: XLA:CPU spends tens of seconds optimising a program that runs once.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from flax import nnx

from mlfd_jax import modelfn, train

MODELS = (("resnet18", 0.125), ("resnet50", 0.0625), ("convnext_atto", 0.2), ("vit_ti", 1 / 6))


def _plain_init(fn: modelfn.ModelFn):
  return lambda key: modelfn.variables(fn._make(nnx.Rngs(key)))


def _trace_seconds(init) -> float:
  key = jax.random.key(0)
  t = time.process_time()
  jax.eval_shape(init, key)
  jax.jit(init).lower(key)
  return time.process_time() - t


def _compile_seconds(lowered, options) -> tuple[float, object]:
  t = time.perf_counter()
  compiled = lowered.compile(options) if options else lowered.compile()
  return time.perf_counter() - t, compiled


def compare_compiles(rounds: int) -> None:
  print(f"\n{'model, width':<20} {'default (s)':>12} {'INIT_COMPILER_OPTIONS (s)':>26} "
        f"{'speed-up':>9}  same bits")
  for name, width in MODELS:
    fn = modelfn.from_config({"name": name, "width": width}, num_classes=10, image_size=32)
    key = jax.random.key(0)
    lowered = jax.jit(fn.init).lower(key)
    times = {"default": [], "fast": []}
    outputs = {}
    for _ in range(rounds):
      for kind, options in (("default", None), ("fast", train.INIT_COMPILER_OPTIONS)):
        seconds, compiled = _compile_seconds(lowered, options)
        times[kind].append(seconds)
        outputs[kind] = jax.tree.leaves(compiled(key))
    same = all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(outputs["default"], outputs["fast"]))
    default, fast = statistics.median(times["default"]), statistics.median(times["fast"])
    label = f"{name} {width:.3g}"
    print(f"{label:<20} {default:>12.1f} {fast:>26.1f} {default / fast:>8.1f}x  {same}")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--compile_rounds", type=int, default=1,
                      help="compilations of each kind per model (tens of seconds each; 0: "
                           "time the tracing only)")
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
  if args.compile_rounds:
    compare_compiles(args.compile_rounds)


if __name__ == "__main__":
  main()
