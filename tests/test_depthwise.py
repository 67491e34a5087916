"""The shifted-sum depthwise convolution computes what XLA's grouped convolution computes, value
and gradient, and ConvNeXt gives the same outputs whichever runs its 7x7 convs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mlfd_jax.models import convnext, depthwise


def _loss(impl):
  # A loss whose gradient differs per position and channel, so a transposed or shifted
  # gradient cannot pass.
  def loss(x, kernel, weights):
    return jnp.sum(depthwise.depthwise_conv(x, kernel, impl) * weights)
  return loss


@pytest.mark.parametrize("shape,k", [((6, 5, 7, 3), 7), ((4, 8, 8, 16), 3), ((1, 2, 2, 5), 7)])
def test_shifts_match_xla_value_and_gradients(shape, k):
  kx, kk, kw = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, shape)
  kernel = jax.random.normal(kk, (k, k, 1, shape[-1]))
  weights = jax.random.normal(kw, shape)
  want = depthwise.depthwise_conv(x, kernel, "xla")
  got = jax.jit(depthwise.depthwise_conv, static_argnums=2)(x, kernel, "shifts")
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  grads = [jax.jit(jax.grad(_loss(impl), argnums=(0, 1)))(x, kernel, weights)
           for impl in ("xla", "shifts")]
  for want_g, got_g in zip(*grads):
    assert got_g.shape == want_g.shape
    np.testing.assert_allclose(got_g, want_g, rtol=1e-4, atol=1e-4)


def test_bfloat16_keeps_its_dtype_and_accumulates_in_float32():
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 8))
  kernel = jax.random.normal(jax.random.key(2), (7, 7, 1, 8))
  got = depthwise.depthwise_conv(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), "shifts")
  assert got.dtype == jnp.bfloat16
  want = depthwise.depthwise_conv(x.astype(jnp.bfloat16).astype(jnp.float32),
                                  kernel.astype(jnp.bfloat16).astype(jnp.float32), "xla")
  np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=2e-2, atol=2e-2)


def test_auto_picks_shifts_on_cpu_and_bad_names_fail():
  assert depthwise.resolve("auto") == ("shifts" if jax.default_backend() == "cpu" else "xla")
  with pytest.raises(ValueError, match=r"^unknown depthwise 'fast'; valid: auto, shifts, xla$"):
    depthwise.resolve("fast")


def test_convnext_same_outputs_and_gradients_with_either_impl():
  models = {impl: convnext.convnext_atto(num_classes=5, image_size=16, rngs=nnx.Rngs(0),
                                         width=0.2, depths=(1, 1, 1, 1), depthwise=impl)
            for impl in ("xla", "shifts")}
  # Same seed, same parameter tree: a checkpoint does not depend on the choice.
  states = {impl: nnx.state(m, nnx.Param) for impl, m in models.items()}
  assert jax.tree.structure(states["xla"]) == jax.tree.structure(states["shifts"])
  for a, b in zip(jax.tree.leaves(states["xla"]), jax.tree.leaves(states["shifts"])):
    np.testing.assert_array_equal(a, b)
  images = jax.random.normal(jax.random.key(3), (3, 16, 16, 3))

  def loss(model):
    logits, feats = model(images, train=False)
    return jnp.sum(logits ** 2) + jnp.sum(feats["stage1"] * feats["stage1"][..., ::-1])

  outs = {impl: nnx.value_and_grad(loss)(m) for impl, m in models.items()}
  np.testing.assert_allclose(outs["shifts"][0], outs["xla"][0], rtol=1e-4)
  grads = [jax.tree.leaves(nnx.state(outs[i][1], nnx.Param)) for i in ("xla", "shifts")]
  for want, got in zip(*grads):
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
