r"""Would folding BatchNorm into the convolutions speed up the frozen models' forward pass?

  python -m benchmarks.bn_folding --width 0.125 --batch 128 --rounds 5 --iters 10

A frozen model (a stage-1 teacher inside a live student or joint-teacher step, or any model at
evaluation) runs BatchNorm with its running statistics: a per-channel scale and shift after
each convolution. Folded, the scale moves into the convolution's kernel (the same convolution,
at the same cost) and the shift becomes a per-channel bias. So the folded model's forward pass
costs exactly the unfolded one with every BatchNorm replaced by a bias add, which is what this
times against the model as it is: no folded copy of the weights is needed to know what folding
would give. The two programs are timed in alternating rounds (median of `--iters` synchronised
calls each) so that load from other processes falls on both alike (issue 12).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import timing
from mlfd_jax import modelfn


@contextlib.contextmanager
def batchnorm_as_bias():
  """While active, tracing a model turns each BatchNorm into `x + bias`: the folded model."""
  original = nnx.BatchNorm.__call__
  nnx.BatchNorm.__call__ = lambda self, x, **kw: x + self.bias[...].astype(x.dtype)
  try:
    yield
  finally:
    nnx.BatchNorm.__call__ = original


def main(argv=None) -> dict[str, float]:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="resnet18")
  p.add_argument("--width", type=float, default=0.125)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--iters", type=int, default=10)
  args = p.parse_args(argv)
  fn = modelfn.from_config({"name": args.model, "width": args.width}, num_classes=10,
                           image_size=args.image_size)
  variables = fn.init(jax.random.key(0))
  x = jnp.asarray(np.random.default_rng(0).random(
      (args.batch, args.image_size, args.image_size, 3), np.float32))

  def forward():
    # A new function each time: jax caches a trace by function, and the folded variant must be
    # traced anew while BatchNorm is patched.
    return jax.jit(lambda v, images: fn.apply(v, images, train=False)[:2])

  with batchnorm_as_bias():
    folded = forward().lower(variables, x).compile()
  as_is = forward().lower(variables, x).compile()
  # BatchNorm with running statistics divides by sqrt(var + eps); the folded program must not.
  assert "rsqrt" in as_is.as_text() and "rsqrt" not in folded.as_text()
  times: dict[str, list[float]] = {"batchnorm": [], "folded": []}
  for _ in range(args.rounds):
    for name, f in (("batchnorm", as_is), ("folded", folded)):
      times[name].append(timing.median_ms(lambda f=f: jax.block_until_ready(f(variables, x)),
                                          warmup=2, iters=args.iters))
  ms = {k: statistics.median(v) for k, v in times.items()}
  print(f"{jax.default_backend()} {args.model} width {args.width} batch {args.batch} "
        f"{args.image_size} px, frozen forward: BatchNorm {ms['batchnorm']:.2f} ms, folded "
        f"(BatchNorm as a bias add) {ms['folded']:.2f} ms -> folding would give "
        f"{ms['batchnorm'] / ms['folded']:.3f}x (rounds: "
        + ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(times["batchnorm"], times["folded"]))
        + ")")
  return ms


if __name__ == "__main__":
  main()
