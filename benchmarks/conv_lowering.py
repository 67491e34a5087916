r"""One 3x3 convolution (forward + backward) at the study ResNet's shapes, three ways.

  taskset -c 1 python -m benchmarks.conv_lowering
  taskset -c 1 python -m benchmarks.conv_lowering --only xla --only nchw
  XLA_FLAGS=--xla_cpu_experimental_xnn_fusion_type=individual_convolution \
      taskset -c 1 python -m benchmarks.conv_lowering --only xla

XLA:CPU's convolutions are where our steps lose to PyTorch (RESULTS.md). This asks whether
writing the convolution differently helps: XLA's own convolution, against im2col (the 9 shifted
views concatenated, then one matmul, which runs at the matmul peak), a sum of 9 matmuls, and
XLA's convolution in the channels-first layout (NCHW images, OIHW kernels, as PyTorch's default
stores them; the arrays are transposed once, outside the timed program).
Run it under the XLA flags to try; pin it to one core so the figures compare.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks import timing

# (batch, height = width, channels): the four stages of ResNet-18 at width 1/8, then full width.
SHAPES = ((128, 32, 8), (128, 16, 16), (128, 8, 32), (128, 4, 64), (32, 32, 64))


def conv_xla(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _shifted(x, kh: int, kw: int):
  xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  h, w = x.shape[1], x.shape[2]
  return [xp[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)]


def conv_im2col(x, w):
  kh, kw, ci, co = w.shape
  cols = jnp.concatenate(_shifted(x, kh, kw), axis=-1)
  return jnp.einsum("nhwk,ko->nhwo", cols, w.reshape(kh * kw * ci, co))


def conv_matmul_sum(x, w):
  kh, kw, ci, co = w.shape
  taps = w.reshape(kh * kw, ci, co)
  return sum(jnp.einsum("nhwc,co->nhwo", v, taps[t]) for t, v in enumerate(_shifted(x, kh, kw)))


def conv_nchw(x, w):
  """XLA's convolution on channels-first arrays: x [N, C, H, W], w [O, I, H, W]."""
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                      dimension_numbers=("NCHW", "OIHW", "NCHW"))


LOWERINGS = {"xla": conv_xla, "im2col": conv_im2col, "matmul_sum": conv_matmul_sum,
             "nchw": conv_nchw}
# The layout each lowering takes its arguments in, from NHWC / HWIO, and its output back.
TO_LAYOUT = {"nchw": (lambda x: x.transpose(0, 3, 1, 2), lambda w: w.transpose(3, 2, 0, 1),
                      lambda y: y.transpose(0, 2, 3, 1))}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--only", choices=tuple(LOWERINGS), action="append",
                  help="time this lowering (repeatable; default: all)")
  p.add_argument("--iters", type=int, default=10)
  args = p.parse_args(argv)
  names = args.only or list(LOWERINGS)
  for n, hw, c in SHAPES:
    x = jax.random.normal(jax.random.key(0), (n, hw, hw, c))
    w = 0.1 * jax.random.normal(jax.random.key(1), (3, 3, c, c))
    flops = 3 * 2 * n * hw * hw * 9 * c * c  # forward, and the two products of the backward
    cells = []
    for name in names:
      f = LOWERINGS[name]
      to_x, to_w, back = TO_LAYOUT.get(name, (lambda a: a,) * 3)
      xl, wl = to_x(x), to_w(w)
      err = float(jnp.max(jnp.abs(back(f(xl, wl)) - conv_xla(x, w))))
      grad = jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) ** 2), argnums=(0, 1)))
      ms = timing.median_ms(lambda: jax.block_until_ready(grad(xl, wl)), warmup=2,
                            iters=args.iters)
      cells.append(f"{name} {ms:.2f} ms ({flops / ms / 1e6:.0f} GFLOP/s, max |diff| {err:.0e})")
    print(f"batch {n}, {hw} px, {c} ch: " + "; ".join(cells), flush=True)


if __name__ == "__main__":
  main()
