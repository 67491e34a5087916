r"""Is training K same-architecture models in one vmapped program faster than one after another?

  python -m benchmarks.stacked_models --models 3 --width 0.125 --batch 128

Times one ResNet train step (SGD, cross-entropy, the pipeline's ModelFn) on one model and the
same step vmapped over K models with K batches, on the current backend. The pipeline trains
students (and teachers) of one architecture one after another; this measures whether stacking
them would pay (issue 12). On XLA:CPU it does not (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlfd_jax import modelfn


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", type=int, default=3)
  p.add_argument("--model", default="resnet18")
  p.add_argument("--width", type=float, default=0.125)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--iters", type=int, default=15)
  args = p.parse_args(argv)
  fn = modelfn.from_config({"name": args.model, "width": args.width}, num_classes=10,
                           image_size=args.image_size)
  tx = optax.sgd(0.1, momentum=0.9)

  def step(variables, opt_state, x, y):
    def loss(params):
      logits, _, state = fn.apply({"params": params, "model_state": variables["model_state"]},
                                  x, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state

    (value, state), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    updates, opt_state = tx.update(grads, opt_state, variables["params"])
    return ({"params": optax.apply_updates(variables["params"], updates), "model_state": state},
            opt_state, value)

  k = args.models
  variables = [fn.init(jax.random.key(i)) for i in range(k)]
  opt_states = [tx.init(v["params"]) for v in variables]
  shape = (k, args.batch, args.image_size, args.image_size, 3)
  x = jnp.asarray(np.random.default_rng(0).random(shape, np.float32))
  y = jnp.zeros(shape[:2], jnp.int32)
  stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)  # noqa: E731

  def per_step(f, v, o, xs, ys):
    v, o, loss = f(v, o, xs, ys)
    loss.block_until_ready()
    t = time.perf_counter()
    for _ in range(args.iters):
      v, o, loss = f(v, o, xs, ys)
    loss.block_until_ready()
    return (time.perf_counter() - t) / args.iters

  stacked = stack(variables), stack(opt_states)  # before the single run donates model 0
  one = per_step(jax.jit(step, donate_argnums=(0, 1)), variables[0], opt_states[0], x[0], y[0])
  many = per_step(jax.jit(jax.vmap(step), donate_argnums=(0, 1)), *stacked, x, y)
  print(f"{jax.default_backend()}: one model {1e3 * one:.1f} ms/step; {k} vmapped "
        f"{1e3 * many:.1f} ms/step -> {k * one / many:.2f}x the throughput of one after another")


if __name__ == "__main__":
  main()
