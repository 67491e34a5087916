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


def joint_block(*, mode: str = "all", fusion_level: str = "stage3", width: int = 64,
                dropout: float = 0.2, shape_like: str = "", finetune_teachers: bool = False,
                precompute_teachers: bool = False) -> ml_collections.ConfigDict:
  """Stage 2's joint teacher: `mode` (`all`: the paper; `per_dataset`: the reference code), the
  fusion level, the fusion width, the head's dropout, the reference student (`shape_like`,
  default the first dataset), whether the teachers fine-tune, and whether their fusion-level
  maps are computed once on the un-augmented training images (`precompute_teachers`, the
  reference code's trade-off; stages/precomputed.py) instead of on every step's view."""
  return ml_collections.ConfigDict(dict(
      mode=mode, fusion_level=fusion_level, width=width, dropout=dropout, shape_like=shape_like,
      finetune_teachers=finetune_teachers, precompute_teachers=precompute_teachers))


def distill_block(*, method: str = "mlfd", levels: str = "all", w_kd: float = 0.6,
                  w_feat: float = 0.2, w_ce: float = 0.2, temperature: float = 2.0,
                  label_smoothing: float = 0.0, **overrides) -> ml_collections.ConfigDict:
  """Stage 3's distillation: the method, MLFD's weights, and every other method's options.

  `name` names the run (its directory and results key; default: the method). Each method
  with options of its own gets its sub-block (`amtml`, `feed`) filled from the defaults it
  declares (`Method.OPTIONS`, from its paper's code); `probe_steps`/`probe_examples` size the
  linear probes that give teachers of other datasets logits on the student's classes
  (stages/probes.py). `precompute_targets` computes what the students learn from (the joint
  teacher, the stage-1 teachers or an earlier generation) once on the un-augmented training
  images instead of on every step's augmented view (the reference code's trade-off;
  stages/precomputed.py).
  """
  from mlfd_jax.distill import METHODS  # local: configs import this module before jax work

  block = ml_collections.ConfigDict(dict(
      method=method, name="", levels=levels, w_kd=w_kd, w_feat=w_feat, w_ce=w_ce,
      temperature=temperature, label_smoothing=label_smoothing,
      probe_steps=300, probe_examples=10000, precompute_targets=False))
  for cls in METHODS.values():
    if cls.options_key and cls.options_key not in block:
      block[cls.options_key] = dict(cls.OPTIONS)
  block.update(overrides)
  return block


SETTINGS = ("paper", "reference")


def run_keys(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The top-level keys every config carries (so each can be overridden on any config)."""
  c.stage = "all"
  c.seed = 0
  c.num_devices = 0  # 0: all devices
  c.sharding = "replicated"  # or "fsdp": trained models' state split over the devices
  c.fsdp_size = 0  # with fsdp: devices a state tensor is split over (0: all; a divisor: hybrid)
  c.student_datasets = ""  # comma-separated datasets that get students; empty: all
  c.teacher_datasets = ""  # stage=teachers only: comma-separated datasets whose teachers train
  return c


def apply_setting(c: ml_collections.ConfigDict, setting: str) -> ml_collections.ConfigDict:
  """`paper` (as built) or `reference`: the paper authors' code, which fuses the teachers at
  their last map (stage4), trains one joint teacher per target dataset on that dataset only,
  and distils the last conv map alone (method `mlfd_last`)."""
  if setting not in SETTINGS:
    raise ValueError(f"unknown setting {setting!r}; valid: {', '.join(SETTINGS)}")
  if setting == "reference":
    c.joint.fusion_level = "stage4"
    c.joint.mode = "per_dataset"
    c.distill.method = "mlfd_last"
  return c


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
    kind = type(defaults[key])
    if defaults[key] is None or kind is str:
      out[key] = value
      continue
    try:
      out[key] = kind(value)
    except ValueError:
      raise ValueError(f"{key} is {'an int' if kind is int else 'a ' + kind.__name__}; "
                       f"got {value!r}") from None
  return out
