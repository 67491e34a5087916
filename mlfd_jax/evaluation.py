"""Evaluation of a model's predictions: validation during training, best/last reports after.

Separate from the trainer so that evaluating a finished checkpoint builds no optimizer and no
train step: an `Evaluator` needs only the task's `predict`, its frozen inputs and the mesh.
Model selection reads only `val`; the test split is read only by `report`.

A model whose prediction starts with frozen models (a joint teacher's teachers) can say so with
`FrozenInputs`: evaluation images are never augmented, so what the frozen models compute from
them never changes, and the evaluator computes it once per split and keeps it (up to
`CACHE_BYTES` in all), running only the trained part at every later validation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mlfd_jax import checkpoint, metrics, parallel
from mlfd_jax.data import augment

CACHE_BYTES = 2 ** 30  # frozen models' outputs an Evaluator keeps, in all splits together


@dataclasses.dataclass
class EvalSet:
  """A dataset evaluated on one output head of the task."""
  name: str
  dataset: Any
  head: int = 0


@dataclasses.dataclass(frozen=True)
class FrozenInputs:
  """A prediction split where its frozen part ends: `compute(frozen, images)` (normalised
  images -> what the frozen models give the trained part, batch-major) and
  `predict(params, model_state, frozen, inputs, head)` -> the logits `predict` gives."""
  compute: Callable[[Any, jax.Array], Any]
  predict: Callable[..., jax.Array]


class Evaluator:
  """Top-1/top-5 of `predict(params, model_state, frozen, images, head)` on eval splits."""

  def __init__(self, predict: Callable[..., jax.Array], frozen: Any, mesh, batch_size: int,
               frozen_inputs: FrozenInputs | None = None, cache_bytes: int = CACHE_BYTES):
    self.predict, self.frozen, self.mesh, self.batch_size = predict, frozen, mesh, batch_size
    self.frozen_inputs, self.cache_bytes = frozen_inputs, cache_bytes
    self._cache: dict[tuple[str, str], list[dict]] = {}  # (eval set, split) -> its batches
    self._cached_bytes = 0
    repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
    # The model's variables keep the layout they come in (replicated, or fsdp-sharded by the
    # trainer); the frozen models are replicated.
    self._eval = jax.jit(self._eval_step, static_argnums=(3,),
                         in_shardings=(None, repl, data), out_shardings=repl)
    if frozen_inputs is not None:
      self._inputs = jax.jit(lambda f, images: frozen_inputs.compute(f, augment.normalize(images)),
                             in_shardings=(repl, data), out_shardings=data)
      self._eval_from_inputs = jax.jit(self._eval_inputs_step, static_argnums=(3,),
                                       in_shardings=(None, repl, data), out_shardings=repl)

  def _eval_step(self, model, frozen, batch, head):
    images = augment.normalize(batch["image"])
    logits = self.predict(model["params"], model["model_state"], frozen, images, head)
    return _correct(logits, batch)

  def _eval_inputs_step(self, model, frozen, batch, head):
    logits = self.frozen_inputs.predict(model["params"], model["model_state"], frozen,
                                        batch["inputs"], head)
    return _correct(logits, batch)

  def _batches(self, eval_set: EvalSet, split: str):
    for batch in eval_set.dataset.eval_batches(split, self.batch_size,
                                               process_index=jax.process_index(),
                                               process_count=jax.process_count()):
      yield parallel.to_global({k: batch[k] for k in ("image", "label", "mask")}, self.mesh)

  def _input_batches(self, eval_set: EvalSet, split: str):
    """The split's batches with the frozen part's outputs in place of the images, kept for the
    next call while the cache has room. Each process keeps its own share; the shares of a
    global batch are equal, so every process makes the same choice and runs the same
    programs."""
    key = (eval_set.name, split)
    if key in self._cache:
      yield from self._cache[key]
      return
    kept, size = [], self._cached_bytes
    for batch in self._batches(eval_set, split):
      out = {"inputs": self._inputs(self.frozen, batch["image"]), "label": batch["label"],
             "mask": batch["mask"]}
      size += sum(s.data.nbytes for x in jax.tree.leaves(out) for s in x.addressable_shards)
      kept = kept if kept is not None and size <= self.cache_bytes else None
      if kept is not None:
        kept.append(out)
      yield out
    if kept is not None:
      self._cache[key], self._cached_bytes = kept, size

  def lower(self, model, batch, head: int = 0):
    """The evaluation step lowered for one batch (`image`, `label`, `mask`) of head `head`."""
    return self._eval.lower(model, self.frozen, batch, head)

  def evaluate(self, model, eval_set: EvalSet, split: str) -> dict[str, float]:
    """Top-1/top-5 of `model` on a split of `eval_set`, exact over padding and devices."""
    totals = {"top1": 0.0, "top5": 0.0, "count": 0.0}
    if self.frozen_inputs is None:
      outs = (self._eval(model, self.frozen, b, eval_set.head)
              for b in self._batches(eval_set, split))
    else:
      outs = (self._eval_from_inputs(model, self.frozen, b, eval_set.head)
              for b in self._input_batches(eval_set, split))
    for out in outs:
      for k, v in jax.device_get(out).items():
        totals[k] += float(v)
    n = max(totals["count"], 1.0)
    return {"top1": totals["top1"] / n, "top5": totals["top5"] / n, "count": int(totals["count"])}

  def validate(self, model, eval_sets: list[EvalSet]) -> dict[str, float]:
    """Validation top-1 per eval set and their mean (`val_top1`, what model selection uses)."""
    out = {f"val_top1/{es.name}": self.evaluate(model, es, "val")["top1"] for es in eval_sets}
    out[checkpoint.VAL_METRIC] = float(np.mean([out[f"val_top1/{es.name}"]
                                                for es in eval_sets]))
    return out

  def report(self, ckpts: checkpoint.Checkpoints, abstract_model, eval_sets: list[EvalSet]
             ) -> dict[str, dict[str, Any]]:
    """val/test top-1 and test top-5 per eval set, for the best-by-val and the last step;
    `abstract_model` is the restore target (shapes, dtypes, shardings)."""
    best, last = ckpts.best_step(), ckpts.latest_step()
    if last is None:
      raise ValueError(f"no checkpoint in {ckpts.directory}")
    best = last if best is None else best
    evaluated: dict[int, dict[str, dict[str, Any]]] = {}
    for step in dict.fromkeys((best, last)):
      model = ckpts.restore_model(step, abstract_model)
      evaluated[step] = {}
      for es in eval_sets:
        val = self.evaluate(model, es, "val")
        test = self.evaluate(model, es, "test")
        evaluated[step][es.name] = {"val_top1": val["top1"], "test_top1": test["top1"],
                                    "test_top5": test["top5"], "step": step}
    return {es.name: {**evaluated[best][es.name], "last": evaluated[last][es.name]}
            for es in eval_sets}


def _correct(logits, batch) -> dict[str, jax.Array]:
  logits, mask = logits.astype(jnp.float32), batch["mask"]
  return {"top1": metrics.topk_correct(logits, batch["label"], 1, mask),
          "top5": metrics.topk_correct(logits, batch["label"], 5, mask),
          "count": jnp.sum(mask.astype(jnp.float32))}


def eval_batch_size(train_cfg) -> int:
  """`eval_batch_size` if set, else the training batch size."""
  return int(train_cfg.get("eval_batch_size", 0) or train_cfg.batch_size)
