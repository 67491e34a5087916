"""Optimizers and learning-rate schedules from a config block.

```
optimizer = dict(name='sgd' | 'adamw', lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                 b1=0.9, b2=0.999, grad_clip=0.0)
schedule  = dict(name='cosine' | 'onecycle' | 'constant', warmup_steps=0, final_lr_fraction=0.0,
                 pct_start=0.3)
```
Weight decay skips vectors (biases, norm scales): the common choice for ResNets and ViTs.
SGD's decay is coupled (added to the gradient, as in PyTorch's SGD); AdamW's is decoupled.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from mlfd_jax.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")
SCHEDULES: Registry = Registry("schedule")


def _decay_mask(params):
  return jax.tree.map(lambda p: p.ndim > 1, params)


@SCHEDULES.register("cosine")
def _cosine(lr, steps, c):
  warmup = int(c.get("warmup_steps", 0))
  if not warmup:
    return optax.cosine_decay_schedule(lr, max(steps, 1),
                                       alpha=float(c.get("final_lr_fraction", 0.0)))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warmup,
      decay_steps=max(steps, warmup + 1), end_value=lr * float(c.get("final_lr_fraction", 0.0)))


@SCHEDULES.register("onecycle")
def _onecycle(lr, steps, c):
  return optax.cosine_onecycle_schedule(
      transition_steps=max(steps, 1), peak_value=lr, pct_start=float(c.get("pct_start", 0.3)))


@SCHEDULES.register("constant")
def _constant(lr, steps, c):
  warmup = int(c.get("warmup_steps", 0))
  if not warmup:
    return optax.constant_schedule(lr)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])


@OPTIMIZERS.register("sgd")
def _sgd(schedule, c):
  return optax.chain(
      optax.add_decayed_weights(float(c.get("weight_decay", 0.0)), mask=_decay_mask),
      optax.sgd(schedule, momentum=float(c.get("momentum", 0.9)) or None,
                nesterov=bool(c.get("nesterov", False))))


@OPTIMIZERS.register("adamw")
def _adamw(schedule, c):
  return optax.adamw(schedule, b1=float(c.get("b1", 0.9)), b2=float(c.get("b2", 0.999)),
                     weight_decay=float(c.get("weight_decay", 0.0)), mask=_decay_mask)


def make_optimizer(optimizer_cfg: Any, schedule_cfg: Any, total_steps: int):
  """Returns (optax transformation, schedule fn) for `total_steps` of training."""
  lr = float(optimizer_cfg["lr"])
  schedule = SCHEDULES.get(schedule_cfg["name"])(lr, total_steps, schedule_cfg)
  tx = OPTIMIZERS.get(optimizer_cfg["name"])(schedule, optimizer_cfg)
  clip = float(optimizer_cfg.get("grad_clip", 0.0) or 0.0)
  if clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx, schedule
