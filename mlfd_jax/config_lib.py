"""Building blocks for config files, so every config spells a block the same way.

Every model, teacher, joint teacher or student, is a block `{name, **kwargs}`; every training
phase is a `train_block`. Each block carries all of its keys (with defaults) so that any of them
can be overridden as `--config.KEY=VALUE` on a locked config.
"""

from __future__ import annotations

import ml_collections


def train_block(*, steps: int = 0, epochs: float = 0.0, batch_size: int = 128,
                optimizer: str = "sgd", lr: float = 0.1, weight_decay: float = 5e-4,
                schedule: str = "cosine", warmup_steps: int = 0, label_smoothing: float = 0.1,
                eval_every: int = 500, log_every: int = 50, dtype: str = "float32",
                **overrides) -> ml_collections.ConfigDict:
  block = ml_collections.ConfigDict(dict(
      steps=steps, epochs=epochs, batch_size=batch_size, eval_batch_size=0,
      optimizer=dict(name=optimizer, lr=lr, momentum=0.9, nesterov=True,
                     weight_decay=weight_decay, b1=0.9, b2=0.999, grad_clip=0.0),
      schedule=dict(name=schedule, warmup_steps=warmup_steps, final_lr_fraction=0.0,
                    pct_start=0.3),
      label_smoothing=label_smoothing, dtype=dtype, log_every=log_every, eval_every=eval_every,
      keep=2))
  block.update(overrides)
  return block


def model_block(name: str, **kwargs) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(name=name, **kwargs))


def parse_arg(arg: str | None, defaults: dict) -> ml_collections.ConfigDict:
  """`variant=small,seed=3` (or just `small` for the first key) -> ConfigDict over `defaults`."""
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  first = next(iter(defaults))
  for part in arg.split(","):
    key, _, value = part.partition("=") if "=" in part else (first, "=", part)
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; valid: {', '.join(defaults)}")
    out[key] = type(defaults[key])(value) if defaults[key] is not None else value
  return out
