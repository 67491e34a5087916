"""A trained teacher or student from its checkpoint directory alone, ready to classify images.

  from mlfd_jax import classifier
  model = classifier.load("runs/digits/students/digits_a")  # the best-by-validation step
  logits = model(images)  # uint8 [N, H, W, 3] -> float32 [N, num_classes]

The directory's `config.json` names the architecture (its `meta`), so no config file, workdir
or dataset is needed; the variables restore onto this process's first device whatever devices
saved them (a checkpoint of an 8-GPU run loads on a laptop). Images go through what evaluation
does (scaled to 0..1, normalised, resized to the model's resolution), and the network runs in
float32. A student's checkpoint also holds its distillation method's adaptors; only the student
network is loaded. Joint teachers (several frozen teachers under a fusion head) and the joint
baseline (one head per dataset) are not single classifiers and are refused.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mlfd_jax import checkpoint, fileio, modelfn
from mlfd_jax.data import augment

# meta key of the network's model block -> what the directory holds
_NETWORK_KEYS = {"model": "teacher", "student": "student"}


@dataclasses.dataclass(frozen=True)
class Classifier:
  """One trained network: `model(images)` returns its logits."""
  fn: modelfn.ModelFn
  variables: dict[str, Any]  # {"params", "model_state"} of the network alone
  kind: str                  # "teacher" or "student"
  step: int                  # the checkpoint step the variables come from
  num_classes: int
  image_size: int

  def __call__(self, images) -> jax.Array:
    return _logits(self.fn, self.image_size, self.variables, images)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _logits(fn: modelfn.ModelFn, image_size: int, variables, images):
  x = augment.fit(augment.normalize(images), image_size)
  return fn.apply(variables, x, train=False)[0].astype(np.float32)


def load(directory: str, step: int | None = None) -> Classifier:
  """The teacher or student whose checkpoints are in `directory` (WORKDIR/teachers/<dataset>,
  WORKDIR/students/<dataset>, WORKDIR/<run>/<dataset>), at `step` or else at the kept step
  with the best validation top-1 (the step results.json reports)."""
  directory = fileio.resolve(directory)
  config_path = fileio.join(directory, "config.json")
  if not fileio.exists(config_path):
    raise FileNotFoundError(f"no config.json in {directory}: not a model's checkpoint directory")
  meta = json.loads(fileio.read_text(config_path)).get("meta", {})
  key = next((k for k in _NETWORK_KEYS if k in meta), None)
  if key is None or not isinstance(meta.get("num_classes"), int):
    raise ValueError(f"{directory} holds a model with one head per dataset (a joint teacher or "
                     f"the joint baseline); only a teacher's or a student's checkpoints load as "
                     f"one classifier")
  ckpts = checkpoint.Checkpoints(directory, read_only=True)
  steps = ckpts.steps()
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  if step is None:
    step = ckpts.best_step() or steps[-1]
  elif step not in steps:
    raise ValueError(f"no step {step} in {directory}; kept steps: {steps}")
  stored = ocp.StandardCheckpointHandler().metadata(
      fileio.path(fileio.join(directory, str(step), "model"))).tree  # shapes and dtypes
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  model = ckpts.restore_model(step, checkpoint.abstract_like(stored, device))
  if key == "student":  # {"params": {"student", "method"}, "model_state": {"student"}}
    model = {part: model[part]["student"] for part in ("params", "model_state")}
  fn = modelfn.from_config(meta[key], num_classes=int(meta["num_classes"]),
                           image_size=int(meta["image_size"]))
  return Classifier(fn=fn, variables=model, kind=_NETWORK_KEYS[key], step=step,
                    num_classes=int(meta["num_classes"]), image_size=int(meta["image_size"]))
