"""Depthwise convolution (ConvNeXt's 7x7) written as shifted multiply-adds for CPUs.

XLA:CPU lowers a convolution with `feature_group_count == channels` to a generic grouped
convolution that runs 10-50x slower than the same arithmetic as shifted slices: a ConvNeXt step
spent about 85% of its forward pass there (benchmarks/RESULTS.md). `shifts` computes the same
function as k*k shifted multiply-adds that XLA fuses into one loop, with a hand-written gradient:
the input gradient is the same sum with the kernel flipped, and the kernel gradient sums each
shifted product with a matmul, a few images at a time. `xla` keeps `lax.conv_general_dilated`
(what GPUs and TPUs run fast); `auto`, the default, picks `shifts` on CPU and `xla` elsewhere.
Both take and give the parameters of `nnx.Conv(..., feature_group_count=channels)` (kernel
[k, k, 1, C], bias [C]), so checkpoints do not depend on the choice.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

IMPLS = ("auto", "shifts", "xla")
_CHUNK = 4  # images per step of the kernel gradient's scan


def resolve(impl: str) -> str:
  """`auto` -> `shifts` on CPU, `xla` on other backends; checks the name."""
  if impl not in IMPLS:
    raise ValueError(f"unknown depthwise {impl!r}; valid: {', '.join(IMPLS)}")
  if impl == "auto":
    return "shifts" if jax.default_backend() == "cpu" else "xla"
  return impl


def _shift_sum(x, kernel):
  """sum_ij pad(x)[:, i:i+H, j:j+W, :] * kernel[i, j]: a stride-1 SAME depthwise conv,
  accumulated in float32 (`kernel` [k, k, C], odd k)."""
  k, (h, w) = kernel.shape[0], x.shape[1:3]
  p = k // 2
  xp = jnp.pad(x.astype(jnp.float32), ((0, 0), (p, p), (p, p), (0, 0)))
  kernel = kernel.astype(jnp.float32)
  out = jnp.zeros(x.shape, jnp.float32)
  for i in range(k):
    for j in range(k):
      out = out + xp[:, i:i + h, j:j + w, :] * kernel[i, j]
  return out


def _kernel_grad(x, g, k: int):
  """d(loss)/d(kernel)[i, j, c] = sum_{b,h,w} pad(x)[b, h+i, w+j, c] * g[b, h, w, c].

  Each shifted product is summed over (image, row) by a matmul with ones, then over columns,
  in scans over chunks of a few images and over kernel rows. Written without the scans,
  XLA:CPU rewrites the k*k products and matmuls into one program that runs about 5x slower
  (so does its own reduction of the products over all three axes) and compiles 3x longer."""
  b, h, w, c = g.shape
  p = k // 2
  chunk = math.gcd(b, _CHUNK)
  xp = jnp.pad(x.astype(jnp.float32), ((0, 0), (p, p), (p, p), (0, 0)))
  xs = xp.reshape(b // chunk, chunk, *xp.shape[1:])
  gs = g.astype(jnp.float32).reshape(b // chunk, chunk * h, w * c)
  ones = jnp.ones((1, chunk * h), jnp.float32)

  def per_chunk(acc, part):
    xc, gc = part

    def per_row(_, i):  # kernel row i: the k column shifts of rows i..i+h
      band = jax.lax.dynamic_slice_in_dim(xc, i, h, axis=1)
      sums = [ones @ (band[:, :, j:j + w, :].reshape(chunk * h, w * c) * gc)
              for j in range(k)]
      return None, jnp.concatenate(sums).reshape(k, w, c).sum(axis=1)

    _, rows = jax.lax.scan(per_row, None, jnp.arange(k))
    return acc + rows, None

  acc, _ = jax.lax.scan(per_chunk, jnp.zeros((k, k, c), jnp.float32), (xs, gs))
  return acc


@jax.custom_vjp
def _depthwise_shifts(x, kernel):
  return _shift_sum(x, kernel).astype(x.dtype)


def _fwd(x, kernel):
  return _depthwise_shifts(x, kernel), (x, kernel)


def _bwd(saved, g):
  x, kernel = saved
  dx = _shift_sum(g, kernel[::-1, ::-1]).astype(x.dtype)
  return dx, _kernel_grad(x, g, kernel.shape[0]).astype(kernel.dtype)


_depthwise_shifts.defvjp(_fwd, _bwd)


def depthwise_conv(x, kernel, impl: str = "auto"):
  """Stride-1 SAME depthwise conv of NHWC `x` with an `nnx.Conv` kernel [k, k, 1, C]."""
  if resolve(impl) == "shifts":
    return _depthwise_shifts(x, kernel[:, :, 0, :])
  k = kernel.shape[0]
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), ((k // 2, k // 2),) * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=x.shape[-1])


class DepthwiseConv(nnx.Module):
  """`nnx.Conv(dim, dim, (k, k), padding=k//2, feature_group_count=dim)`, the same parameters,
  computed by `depthwise_conv` with `impl`."""

  def __init__(self, dim: int, kernel_size: int, *, impl: str = "auto", kernel_init,
               dtype=None, rngs: nnx.Rngs):
    if kernel_size % 2 != 1:
      raise ValueError(f"DepthwiseConv kernel_size {kernel_size} must be odd")
    resolve(impl)
    self.kernel = nnx.Param(kernel_init(rngs.params(), (kernel_size, kernel_size, 1, dim),
                                        jnp.float32))
    self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
    self.impl, self.dtype = impl, dtype

  def __call__(self, x):
    dtype = self.dtype or x.dtype
    y = depthwise_conv(x.astype(dtype), self.kernel[...].astype(dtype), self.impl)
    return y + self.bias[...].astype(y.dtype)
