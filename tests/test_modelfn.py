"""A model's variable shapes are known without tracing its constructor again: `ModelFn` holds them
from the one trace it makes, and `init_shapes` traces any other init function once."""

import jax
import jax.numpy as jnp
import pytest

from mlfd_jax import modelfn, train


@pytest.mark.parametrize("block", [dict(name="resnet18", width=0.125),
                                   dict(name="convnext_atto", width=0.2, depths=(1, 1, 1, 1)),
                                   dict(name="vit_ti", depth=4, patch_size=4)])
def test_abstract_variables_are_what_init_returns(block):
  fn = modelfn.from_config(block, num_classes=10, image_size=16)
  want = jax.eval_shape(fn.init, jax.random.key(0))
  got = fn.abstract_variables
  assert jax.tree.structure(got) == jax.tree.structure(want)
  assert [(x.shape, x.dtype) for x in jax.tree.leaves(got)] == \
      [(x.shape, x.dtype) for x in jax.tree.leaves(want)]


def test_an_init_function_is_traced_once():
  traced = []

  def init(key):
    traced.append(key)
    return {"params": {"w": jax.random.normal(key, (3, 5))},
            "model_state": {"n": jnp.zeros((), jnp.int32)}}

  mesh = jax.sharding.Mesh(jax.devices(), ("data",))
  first = modelfn.init_shapes(init)
  restore_target = train.abstract_variables(init, mesh)
  assert len(traced) == 1
  assert first["params"]["w"].shape == (3, 5)
  assert restore_target["params"]["w"].shape == (3, 5)
  assert restore_target["model_state"]["n"].dtype == jnp.int32
