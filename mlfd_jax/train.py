"""The shared training loop: every stage is a `Task` handed to `fit`.

A `Task` says what trains (its `init`), what it minimises (`loss`, taking the trainable params
first and any frozen models as a separate input) and how it predicts (`predict`). `fit` owns the
rest, the same for every stage: mesh, optimizer, one jitted step that augments the batch on
device, takes the gradient of the trainable params only and donates the old state; periodic
validation; checkpoints (resume first); metrics and progress with ETA.

Imports neither TensorFlow nor clu: datasets and metric writers are passed in.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from mlfd_jax import checkpoint, metrics, optim, parallel
from mlfd_jax.data import augment


class Writer(Protocol):
  def write_scalars(self, step: int, scalars: dict[str, float]) -> None: ...
  def flush(self) -> None: ...


@dataclasses.dataclass
class Task:
  """What a stage trains, in the functional form the loop jits.

  init(key) -> {'params', 'model_state'}
  loss(params, model_state, frozen, batch, key) -> (loss, (new_model_state, metrics dict))
      `batch` holds the augmented, normalised float `image`, `label`, the `step` being taken
      and, for mixed data, `dataset`; `key` is for dropout.
  predict(params, model_state, frozen, images, head) -> logits of head `head` (static int).
  gate_updates(updates, step) -> updates   optional: zeroes the optimizer's updates of params
      that must hold still from some step on. Exact under momentum and weight decay, which a
      stop_gradient in `loss` alone is not.
  """

  name: str
  init: Callable[[jax.Array], dict[str, Any]]
  loss: Callable[..., Any]
  predict: Callable[..., jax.Array]
  frozen: Any = None
  pad: int = 4
  flip: bool = False
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)
  gate_updates: Callable[[Any, jax.Array], Any] | None = None


@dataclasses.dataclass
class EvalSet:
  """A dataset evaluated on one output head of the task."""
  name: str
  dataset: Any
  head: int = 0


def num_steps(train_cfg, num_train_examples: int) -> int:
  """`steps` if set, else `epochs` worth of global batches."""
  steps = int(train_cfg.get("steps", 0) or 0)
  if steps > 0:
    return steps
  epochs = float(train_cfg.get("epochs", 0) or 0)
  if epochs <= 0:
    raise ValueError("train config needs steps > 0 or epochs > 0")
  return max(1, math.ceil(epochs * num_train_examples / int(train_cfg.batch_size)))


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Trainer:
  """Compiled step and evaluation of one task on one mesh."""

  def __init__(self, task: Task, train_cfg, mesh, total_steps: int):
    self.task, self.cfg, self.mesh, self.total_steps = task, train_cfg, mesh, total_steps
    self.tx, self.schedule = optim.make_optimizer(train_cfg.optimizer, train_cfg.schedule,
                                                  total_steps)
    repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
    self._step = jax.jit(self._train_step, in_shardings=(repl, repl, repl, data, repl),
                         out_shardings=(repl, repl, repl), donate_argnums=(0, 1))
    self._eval = jax.jit(self._eval_step, static_argnums=(3,),
                         in_shardings=(repl, repl, data), out_shardings=repl)

  # State ----------------------------------------------------------------------------------
  def init(self, key) -> tuple[dict, dict]:
    """Fresh (model, train) variables, replicated on the mesh."""
    repl = parallel.replicated(self.mesh)

    def make(key):
      model = self.task.init(key)
      return model, {"step": jnp.zeros((), jnp.int32),
                     "opt_state": self.tx.init(model["params"])}

    return jax.jit(make, out_shardings=(repl, repl))(key)

  def abstract(self):
    """Shapes, dtypes and shardings of (model, train): the targets a restore fills."""
    repl = parallel.replicated(self.mesh)
    model, train = jax.eval_shape(self.init, jax.random.key(0))
    return checkpoint.abstract_like(model, repl), checkpoint.abstract_like(train, repl)

  # Jitted bodies ----------------------------------------------------------------------------
  def _train_step(self, model, train, frozen, batch, base_key):
    step = train["step"]
    aug_key, drop_key = jax.random.split(jax.random.fold_in(base_key, step))
    images = augment.augment(batch["image"], aug_key, pad=self.task.pad, flip=self.task.flip)
    batch = {**batch, "image": augment.normalize(images), "step": step}

    def loss_fn(params):
      return self.task.loss(params, model["model_state"], frozen, batch, drop_key)

    (loss, (model_state, step_metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        model["params"])
    updates, opt_state = self.tx.update(grads, train["opt_state"], model["params"])
    if self.task.gate_updates is not None:
      updates = self.task.gate_updates(updates, step)
    params = optax.apply_updates(model["params"], updates)
    step_metrics = {**step_metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
                    "lr": self.schedule(step)}
    return ({"params": params, "model_state": model_state},
            {"step": step + 1, "opt_state": opt_state}, step_metrics)

  def _eval_step(self, model, frozen, batch, head):
    images = augment.normalize(batch["image"])
    logits = self.task.predict(model["params"], model["model_state"], frozen, images, head)
    logits = logits.astype(jnp.float32)
    mask = batch["mask"]
    return {"top1": metrics.topk_correct(logits, batch["label"], 1, mask),
            "top5": metrics.topk_correct(logits, batch["label"], 5, mask),
            "count": jnp.sum(mask.astype(jnp.float32))}

  # Public -----------------------------------------------------------------------------------
  def step(self, model, train, batch, key):
    return self._step(model, train, self.task.frozen, batch, key)

  def evaluate(self, model, eval_set: EvalSet, split: str) -> dict[str, float]:
    """Top-1/top-5 of `model` on a split of `eval_set`, exact over padding and devices."""
    batch_size = int(self.cfg.get("eval_batch_size", 0) or self.cfg.batch_size)
    totals = {"top1": 0.0, "top5": 0.0, "count": 0.0}
    batches = eval_set.dataset.eval_batches(split, batch_size,
                                            process_index=jax.process_index(),
                                            process_count=jax.process_count())
    for batch in batches:
      batch = {k: batch[k] for k in ("image", "label", "mask")}
      out = self._eval(model, self.task.frozen, parallel.to_global(batch, self.mesh),
                       eval_set.head)
      for k, v in jax.device_get(out).items():
        totals[k] += float(v)
    n = max(totals["count"], 1.0)
    return {"top1": totals["top1"] / n, "top5": totals["top5"] / n, "count": int(totals["count"])}


def _validate(trainer: Trainer, model, eval_sets: list[EvalSet]) -> dict[str, float]:
  """Validation top-1 per eval set and their mean (`val_top1`, what model selection uses)."""
  out = {}
  for es in eval_sets:
    out[f"val_top1/{es.name}"] = trainer.evaluate(model, es, "val")["top1"]
  out[checkpoint.VAL_METRIC] = float(np.mean([out[f"val_top1/{es.name}"] for es in eval_sets]))
  return out


def _check_meta(ckpts: checkpoint.Checkpoints, meta: dict) -> None:
  if not ckpts.steps():
    return
  bad = checkpoint.meta_mismatch(ckpts.read_config(), meta)
  if bad:
    raise ValueError(
        f"{ckpts.directory} holds checkpoints made with {bad[0]}={bad[1]!r} but the config asks "
        f"for {bad[2]!r}; use another --workdir or delete that directory")


def fit(task: Task, train_data, eval_sets: list[EvalSet], train_cfg, ckpt_dir: str, *,
        mesh, seed: int, writer: Writer | None = None, config_dict: dict | None = None,
        ) -> tuple[checkpoint.Checkpoints, Trainer]:
  """Trains `task` to `train_cfg`'s step count in `ckpt_dir`, resuming from its latest step.

  Returns the checkpoint directory's manager and the trainer (whose compiled evaluation
  `report` can reuse); a finished directory is returned untouched.
  """
  parallel.check_batch_size(int(train_cfg.batch_size), mesh)
  total = num_steps(train_cfg, train_data.num_examples("train"))
  ckpts = checkpoint.Checkpoints(ckpt_dir, keep=int(train_cfg.get("keep", 2)))
  _check_meta(ckpts, task.meta)
  latest = ckpts.latest_step()
  if latest is not None and latest >= total:
    logging.info("[%s] finished checkpoint at step %d in %s: nothing to train", task.name,
                 latest, ckpt_dir)
    return ckpts, Trainer(task, train_cfg, mesh, total)

  trainer = Trainer(task, train_cfg, mesh, total)
  if latest is None:
    ckpts.write_config({"meta": task.meta, "config": config_dict or {}})
    model, train = trainer.init(jax.random.key(seed))
    start = 0
    logging.info("[%s] training from scratch for %d steps -> %s", task.name, total, ckpt_dir)
  else:
    model, train = ckpts.restore(latest, *trainer.abstract())
    start = int(jax.device_get(train["step"]))
    logging.info("[%s] resuming at step %d/%d from %s", task.name, start, total, ckpt_dir)

  base_key = parallel.replicated_key(seed + 1, mesh)
  batch_size = int(train_cfg.batch_size)
  eval_every = int(train_cfg.get("eval_every", 0) or total)
  log_every = max(1, int(train_cfg.get("log_every", 50)))
  batches = train_data.train_batches(batch_size, seed=seed, start_step=start,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
  feed = parallel.prefetch(batches, mesh)

  try:
    _loop(trainer, task, feed, model, train, base_key, ckpts, eval_sets, writer, start, total,
          batch_size, log_every, eval_every)
  finally:
    feed.close()  # stops the prefetch thread
  return ckpts, trainer


def _loop(trainer, task, feed, model, train, base_key, ckpts, eval_sets, writer, start, total,
          batch_size, log_every, eval_every):
  """Steps `start`..`total`: log every `log_every`, validate and checkpoint every `eval_every`."""
  pending: list[dict] = []
  window_start, window_steps, t_start = time.perf_counter(), 0, time.perf_counter()
  for step in range(start, total):
    batch = next(feed)
    model, train, step_metrics = trainer.step(model, train, batch, base_key)
    pending.append(step_metrics)
    window_steps += 1
    done = step + 1
    if done % log_every == 0 or done == total:
      fetched = jax.device_get(pending)
      scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
      elapsed = time.perf_counter() - window_start
      scalars["img_per_s"] = window_steps * batch_size / max(elapsed, 1e-9)
      eta = (total - done) * elapsed / max(window_steps, 1)
      logging.info("[%s] step %d/%d (%.0f%%) loss %.4f top1 %.3f lr %.4g | %.0f img/s | "
                   "elapsed %s ETA %s", task.name, done, total, 100 * done / total,
                   scalars["loss"], scalars.get("top1", float("nan")), scalars["lr"],
                   scalars["img_per_s"], _fmt_time(time.perf_counter() - t_start),
                   _fmt_time(eta))
      if writer is not None:
        writer.write_scalars(done, {f"train/{k}": v for k, v in scalars.items()})
      pending, window_start, window_steps = [], time.perf_counter(), 0
    if done % eval_every == 0 or done == total:
      val = _validate(trainer, model, eval_sets)
      logging.info("[%s] step %d: val_top1 %.4f %s", task.name, done, val[checkpoint.VAL_METRIC],
                   " ".join(f"{k.split('/')[-1]}={v:.4f}" for k, v in val.items() if "/" in k))
      if writer is not None:
        writer.write_scalars(done, val)
        writer.flush()
      ckpts.save(done, model, train, metrics=val)
      window_start = time.perf_counter()  # keep eval and save time out of img/s


def restore_model(ckpts: checkpoint.Checkpoints, task: Task, mesh, step: int):
  """The `model` variables of `step`, replicated on `mesh` (any device count)."""
  repl = parallel.replicated(mesh)
  abstract = checkpoint.abstract_like(jax.eval_shape(task.init, jax.random.key(0)), repl)
  return ckpts.restore_model(step, abstract)


def report(task: Task, ckpts: checkpoint.Checkpoints, eval_sets: list[EvalSet], train_cfg,
           mesh, trainer: Trainer | None = None) -> dict[str, dict[str, Any]]:
  """val/test top-1 and test top-5 per eval set, for the best-by-val and the last step.

  Model selection uses only validation; the test split is read only here, for reporting.
  Pass the `Trainer` that trained the task to reuse its compiled evaluation.
  """
  trainer = trainer or Trainer(task, train_cfg, mesh, total_steps=1)
  best, last = ckpts.best_step(), ckpts.latest_step()
  if last is None:
    raise ValueError(f"no checkpoint in {ckpts.directory}")
  best = last if best is None else best
  evaluated: dict[int, dict[str, dict[str, Any]]] = {}
  for step in dict.fromkeys((best, last)):
    model = restore_model(ckpts, task, mesh, step)
    evaluated[step] = {}
    for es in eval_sets:
      val = trainer.evaluate(model, es, "val")
      test = trainer.evaluate(model, es, "test")
      evaluated[step][es.name] = {"val_top1": val["top1"], "test_top1": test["top1"],
                                  "test_top5": test["top5"], "step": step}
  return {es.name: {**evaluated[best][es.name], "last": evaluated[last][es.name]}
          for es in eval_sets}
