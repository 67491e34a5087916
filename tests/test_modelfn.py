"""A model's variable shapes are known without tracing its constructor again: `ModelFn` holds them
from the one trace it makes, and `init_shapes` traces any other init function once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

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


BLOCKS = [dict(name="resnet18", width=0.125), dict(name="vit_ti", depth=4, patch_size=4)]


@pytest.mark.parametrize("block", BLOCKS)
def test_init_draws_what_the_plain_traced_constructor_draws(block):
  """`init` gives, bit for bit, the variables of the constructor traced as flax writes it
  (`make(nnx.Rngs(key))` under jit): its trace-time RNG counters change how the constructor is
  traced, not which keys it draws."""
  fn = modelfn.from_config(block, num_classes=10, image_size=16)

  key = jax.random.key(7)
  got = jax.jit(fn.init)(key)
  want = jax.jit(lambda k: modelfn.variables(fn._make(nnx.Rngs(k))))(key)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("block", BLOCKS)
def test_tracing_a_constructor_never_asks_a_tracer_for_its_sharding(block, monkeypatch):
  """A tracer's `.sharding` raises an error whose message walks the whole trace so far; asked
  once per RNG draw (flax's counter update), it made tracing a constructor quadratic in its
  parameter count. Model functions trace their constructors without asking it."""
  asked = []
  original = jax.core.Tracer.sharding

  def counted(self):
    asked.append(type(self).__name__)
    return original.fget(self)

  monkeypatch.setattr(jax.core.Tracer, "sharding", property(counted))
  fn = modelfn.from_config(block, num_classes=10, image_size=16)
  jax.eval_shape(fn.init, jax.random.key(0))
  jax.jit(fn.init).lower(jax.random.key(0))
  assert asked == []
