"""Optimizers and schedules from config blocks."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mlfd_jax import optim
from mlfd_jax.config_lib import train_block


def _tx(**kw):
  b = train_block(steps=100, lr=0.1, **kw)
  return optim.make_optimizer(b.optimizer, b.schedule, 100)


def test_cosine_with_warmup_and_onecycle():
  _, sched = _tx(warmup_steps=10)
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(float(sched(10)), 0.1, rtol=1e-6)
  assert float(sched(55)) < 0.1 and float(sched(100)) == pytest.approx(0.0, abs=1e-7)
  _, flat = _tx()
  np.testing.assert_allclose(float(flat(0)), 0.1, rtol=1e-6)
  _, one = _tx(schedule="onecycle")
  peak = max(float(one(s)) for s in range(100))
  assert peak == pytest.approx(0.1, rel=1e-3) and float(one(0)) < 0.01


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_skips_vectors(name):
  tx, _ = _tx(optimizer=name, weight_decay=0.5)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  zero = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros((2,))}
  updates, _ = tx.update(zero, tx.init(params), params)
  assert float(jnp.abs(updates["bias"]).sum()) == 0.0
  assert float(jnp.abs(updates["kernel"]).sum()) > 0.0


def test_grad_clip_and_unknown_names():
  b = train_block(steps=10, lr=1.0)
  b.optimizer.grad_clip = 1.0
  b.optimizer.momentum = 0.0
  tx, _ = optim.make_optimizer(b.optimizer, b.schedule, 10)
  p = {"w": jnp.zeros((3, 3))}
  g = {"w": jnp.full((3, 3), 10.0)}
  u, _ = tx.update(g, tx.init(p), p)
  np.testing.assert_allclose(float(optax.tree.norm(u)), 1.0, rtol=1e-5)
  b.optimizer.name = "lamb"
  with pytest.raises(ValueError, match="unknown optimizer 'lamb'; valid: adamw, sgd"):
    optim.make_optimizer(b.optimizer, b.schedule, 10)
