"""The shared training loop: every stage is a `Task` handed to `fit`.

A `Task` says what trains (its `init`), what it minimises (`loss`, taking the trainable params
first and any frozen models as a separate input) and how it predicts (`predict`). `fit` owns the
rest, the same for every stage: mesh, optimizer, one jitted step that augments the batch on
device, takes the gradient of the trainable params only and donates the old state; periodic
validation (evaluation.py); checkpoints (resume first); metrics and progress with ETA.

Imports neither TensorFlow nor clu: datasets and metric writers are passed in.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from mlfd_jax import checkpoint, modelfn, optim, parallel
from mlfd_jax.data import augment
from mlfd_jax.evaluation import EvalSet, Evaluator, FrozenInputs, eval_batch_size


class Writer(Protocol):
  def write_scalars(self, step: int, scalars: dict[str, float]) -> None: ...
  def flush(self) -> None: ...


def keep_updates(updates, step):
  """The default `Task.gate_updates`: every update applies."""
  del step
  return updates


@dataclasses.dataclass
class Task:
  """What a stage trains, in the functional form the loop jits.

  init(key) -> {'params', 'model_state'}
  loss(params, model_state, frozen, batch, key) -> (loss, (new_model_state, metrics dict))
      `batch` holds the augmented, normalised float `image`, `label`, the `step` being taken
      and, for mixed data, `dataset`; `key` is for dropout.
  predict(params, model_state, frozen, images, head) -> logits of head `head` (static int).
  gate_updates(updates, step) -> updates: zeroes the optimizer's updates of params that must
      hold still from some step on (default: none). Exact under momentum and weight decay,
      which a stop_gradient in `loss` alone is not.
  frozen_inputs: `predict` split where its frozen part ends, so that evaluation computes that
      part once per split (evaluation.FrozenInputs); None: `predict` runs whole every time.
  """

  name: str
  init: Callable[[jax.Array], dict[str, Any]]
  loss: Callable[..., Any]
  predict: Callable[..., jax.Array]
  frozen: Any = None
  pad: int = 4
  flip: bool = False
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)
  gate_updates: Callable[[Any, jax.Array], Any] = keep_updates
  frozen_inputs: FrozenInputs | None = None


def num_steps(train_cfg, num_train_examples: int, key: str = "train config") -> int:
  """`steps` if set, else `epochs` worth of global batches."""
  steps = int(train_cfg.get("steps", 0) or 0)
  if steps > 0:
    return steps
  epochs = float(train_cfg.get("epochs", 0) or 0)
  if epochs <= 0:
    raise ValueError(f"{key} needs steps > 0 or epochs > 0; got steps={steps}, "
                     f"epochs={epochs:g}")
  return max(1, math.ceil(epochs * num_train_examples / int(train_cfg.batch_size)))


def abstract_variables(init: Callable[[jax.Array], Any], mesh) -> Any:
  """Shapes and dtypes of `init(key)`'s variables, replicated on `mesh`: a restore target."""
  return checkpoint.abstract_like(modelfn.init_shapes(init), parallel.replicated(mesh))


def restore_model(ckpts: checkpoint.Checkpoints, task: Task, mesh, step: int):
  """The `model` variables of `step`, replicated on `mesh` (any device count)."""
  return ckpts.restore_model(step, abstract_variables(task.init, mesh))


class NonFinite(ArithmeticError):
  """A loss term went NaN or infinite; nothing after the last good checkpoint was saved."""


class Preempted(Exception):
  """SIGTERM or SIGINT arrived: the state at the current step is saved and the run stops."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


class StopSignals:
  """Turns SIGTERM and SIGINT (what a preempted TPU VM, SLURM or Ctrl-C send) into a flag the
  loop reads between steps, for as long as a run holds it (`with STOP:` in main.run); a second
  SIGINT interrupts at once. A signal that comes between two models stops the next one before
  its first step."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: int | None = None
    self._previous: dict[int, Any] = {}
    self._depth = 0

  def _handle(self, signum, frame):
    del frame
    if self.received == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signum

  def __enter__(self) -> "StopSignals":
    self._depth += 1
    if self._depth == 1 and threading.current_thread() is threading.main_thread():
      self.received = None
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc) -> None:
    self._depth -= 1
    if self._depth == 0:
      for s, handler in self._previous.items():
        signal.signal(s, handler)
      self._previous = {}

  def preempted(self, done: int, total: int, name: str) -> Preempted:
    signum = self.received or signal.SIGTERM
    return Preempted(f"stopped by {signal.Signals(signum).name} at step {done}/{total} of {name}: "
                     f"its state is saved; rerun the same command to continue", signum)

  def stop_now(self, done: int, every: int) -> bool:
    """Whether to stop after step `done`: on one process as soon as a signal came; on several,
    at steps that are multiples of `every`, if it reached any of them (all stop together)."""
    if jax.process_count() == 1:
      return self.received is not None
    return done % every == 0 and parallel.any_process(self.received is not None)


STOP = StopSignals()  # the process's; main.run holds it while a stage runs
# XLA options of the one program that draws a model's initial variables on CPU (Trainer.init).
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _fmt_span(seconds: float) -> str:
  """Like `_fmt_time`, with tenths under a minute (a tiny model's validation takes 0.3 s)."""
  return f"{seconds:.1f}s" if seconds < 60 else _fmt_time(seconds)


class _ProgressLog:
  """Averages step metrics over a window and logs them with throughput and ETA."""

  def __init__(self, name: str, total: int, batch_size: int, writer: Writer | None):
    self.name, self.total, self.batch_size, self.writer = name, total, batch_size, writer
    self.pending: list[dict] = []
    self.t_start = self.window_start = time.perf_counter()

  def restart_timer(self) -> None:
    """Keeps evaluation and saving, which are not steps, out of the next img/s."""
    self.window_start = time.perf_counter()

  def add(self, step_metrics: dict) -> None:
    self.pending.append(step_metrics)

  def check_finite(self, done: int) -> list[dict]:
    """The pending steps' metrics, fetched; raises `NonFinite` naming the first step and the
    metrics (loss terms, gradient norm) that went NaN or infinite. Called before logging and
    before every checkpoint, so a diverged state is never saved."""
    fetched = jax.device_get(self.pending)
    for i, m in enumerate(fetched):
      bad = [k for k, v in m.items() if not np.all(np.isfinite(v))]
      if bad:
        step = done - len(fetched) + i + 1
        terms = ", ".join(f"{k}={float(np.asarray(m[k]).mean())}" for k in bad)
        raise NonFinite(f"[{self.name}] step {step}: training went non-finite ({terms}); "
                        f"nothing from that step on is saved; lower the learning rate or "
                        f"check the data")
    return fetched

  def log(self, done: int) -> None:
    fetched = self.check_finite(done)
    scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    elapsed = time.perf_counter() - self.window_start
    scalars["img_per_s"] = len(fetched) * self.batch_size / max(elapsed, 1e-9)
    eta = (self.total - done) * elapsed / max(len(fetched), 1)
    logging.info("[%s] step %d/%d (%.0f%%) loss %.4f top1 %.3f lr %.4g | %.0f img/s | "
                 "elapsed %s ETA %s", self.name, done, self.total, 100 * done / self.total,
                 scalars["loss"], scalars.get("top1", float("nan")), scalars["lr"],
                 scalars["img_per_s"], _fmt_time(time.perf_counter() - self.t_start),
                 _fmt_time(eta))
    if self.writer is not None:
      self.writer.write_scalars(done, {f"train/{k}": v for k, v in scalars.items()})
    self.pending = []
    self.restart_timer()


class Trainer:
  """The compiled train step of one task on one mesh, and the loop around it."""

  def __init__(self, task: Task, train_cfg, mesh, total_steps: int):
    self.task, self.cfg, self.mesh, self.total_steps = task, train_cfg, mesh, total_steps
    self.spent = {"validation": 0.0, "checkpoints": 0.0}  # seconds, in the last `train`
    self.tx, self.schedule = optim.make_optimizer(train_cfg.optimizer, train_cfg.schedule,
                                                  total_steps)
    self.evaluator = Evaluator(task.predict, task.frozen, mesh, eval_batch_size(train_cfg),
                               frozen_inputs=task.frozen_inputs)
    repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
    # Replicated, or split over the mesh's fsdp axis (parallel.py), leaf by leaf.
    model_shapes = modelfn.init_shapes(task.init)
    self._shapes = (model_shapes, jax.eval_shape(self._train_state, model_shapes["params"]))
    self.shardings = parallel.state_shardings(self._shapes, mesh)
    self._step = jax.jit(self._train_step, in_shardings=(*self.shardings, repl, data, repl),
                         out_shardings=(*self.shardings, repl), donate_argnums=(0, 1))

  # State ----------------------------------------------------------------------------------
  def _train_state(self, params) -> dict:
    return {"step": jnp.zeros((), jnp.int32), "opt_state": self.tx.init(params)}

  def _make(self, key) -> tuple[dict, dict]:
    model = self.task.init(key)
    return model, self._train_state(model["params"])

  def init(self, key) -> tuple[dict, dict]:
    """Fresh (model, train state) variables, laid out on the mesh as `self.shardings`.

    On CPU compiled with LLVM's -O1 instead of -O2: XLA:CPU spent 10-45 s optimising the random
    initialisers of one model, a program that runs once, and -O1 cuts that 1.6-7x with the same
    bits out (`python -m benchmarks.model_init`; tests/test_train.py)."""
    options = INIT_COMPILER_OPTIONS if self.mesh.devices.flat[0].platform == "cpu" else None
    return jax.jit(self._make, out_shardings=self.shardings, compiler_options=options)(key)

  def abstract(self):
    """Shapes, dtypes and shardings of (model, train state): the targets a restore fills (so a
    checkpoint saved under one sharding or device count restores under another)."""
    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                        self._shapes, self.shardings)

  # The jitted body --------------------------------------------------------------------------
  def _train_step(self, model, train_state, frozen, batch, base_key):
    step = train_state["step"]
    aug_key, drop_key = jax.random.split(jax.random.fold_in(base_key, step))
    images = augment.augment(batch["image"], aug_key, pad=self.task.pad, flip=self.task.flip)
    batch = {**batch, "image": augment.normalize(images), "step": step}

    def loss_fn(params):
      return self.task.loss(params, model["model_state"], frozen, batch, drop_key)

    (loss, (model_state, step_metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        model["params"])
    updates, opt_state = self.tx.update(grads, train_state["opt_state"], model["params"])
    updates = self.task.gate_updates(updates, step)
    params = optax.apply_updates(model["params"], updates)
    step_metrics = {**step_metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
                    "lr": self.schedule(step)}
    return ({"params": params, "model_state": model_state},
            {"step": step + 1, "opt_state": opt_state}, step_metrics)

  # Public -----------------------------------------------------------------------------------
  def step(self, model, train_state, batch, key):
    return self._step(model, train_state, self.task.frozen, batch, key)

  def lower(self, model, train_state, batch, key):
    """The step lowered for these inputs: `.compile()` gives the program that `step` runs,
    with XLA's cost and memory analysis (benchmarks/throughput.py)."""
    return self._step.lower(model, train_state, self.task.frozen, batch, key)

  def train(self, state: tuple[dict, dict], batches, ckpts: checkpoint.Checkpoints,
            eval_sets: list[EvalSet], writer: Writer | None, base_key) -> None:
    """Steps from the state's step to `total_steps`: logs every `log_every`, validates and
    checkpoints every `eval_every` and at the end. On SIGTERM or SIGINT it saves the current
    step (every process takes part) and raises `Preempted`; rerunning resumes there."""
    model, train_state = state
    start, total = int(jax.device_get(train_state["step"])), self.total_steps
    eval_every = int(self.cfg.get("eval_every", 0) or total)
    log_every = max(1, int(self.cfg.get("log_every", 50)))
    progress = _ProgressLog(self.task.name, total, int(self.cfg.batch_size), writer)
    self.spent = {"validation": 0.0, "checkpoints": 0.0}
    if STOP.stop_now(start, 1):
      raise STOP.preempted(start, total, self.task.name)  # a signal came before this model
    for step in range(start, total):
      model, train_state, step_metrics = self.step(model, train_state, next(batches),
                                                   base_key)
      progress.add(step_metrics)
      done = step + 1
      if done % log_every == 0 or done == total:
        progress.log(done)
      if done % eval_every == 0 or done == total:
        progress.check_finite(done)
        self._validate_and_save(done, (model, train_state), ckpts, eval_sets, writer)
        progress.restart_timer()
      elif STOP.stop_now(done, log_every):
        progress.check_finite(done)
        ckpts.save(done, model, train_state)
        raise STOP.preempted(done, total, self.task.name)
    self._log_summary(start, total, time.perf_counter() - progress.t_start)

  def _log_summary(self, start: int, total: int, seconds: float) -> None:
    """One line per trained model: where its wall time went (the steps' time includes the
    first step's compilation), so a slow stage shows whether steps, validation or saving
    cost it."""
    steps_s = max(seconds - sum(self.spent.values()), 1e-9)
    images = (total - start) * int(self.cfg.batch_size)
    logging.info("[%s] trained steps %d-%d in %s: steps %s (%.0f img/s), validation %s, "
                 "checkpoints %s", self.task.name, start, total, _fmt_span(seconds),
                 _fmt_span(steps_s), images / steps_s, _fmt_span(self.spent["validation"]),
                 _fmt_span(self.spent["checkpoints"]))

  def _validate_and_save(self, done, state, ckpts, eval_sets, writer) -> None:
    """Validation at step `done`, logged and written, then the checkpoint with its metrics."""
    model, train_state = state
    t0 = time.perf_counter()
    val = self.evaluator.validate(model, eval_sets)
    t1 = time.perf_counter()
    logging.info("[%s] step %d: val_top1 %.4f %s", self.task.name, done,
                 val[checkpoint.VAL_METRIC],
                 " ".join(f"{k.split('/')[-1]}={v:.4f}" for k, v in val.items() if "/" in k))
    if writer is not None:
      writer.write_scalars(done, val)
      writer.flush()
    ckpts.save(done, model, train_state, metrics=val)
    self.spent["validation"] += t1 - t0
    self.spent["checkpoints"] += time.perf_counter() - t1


def check_meta(ckpts: checkpoint.Checkpoints, meta: dict) -> None:
  """Refuses a directory whose checkpoints were made for another model (architecture, classes,
  image size, method): restoring them would fail late or, worse, mean something else."""
  if not ckpts.steps():
    return
  bad = checkpoint.meta_mismatch(ckpts.read_config(), meta)
  if bad:
    raise ValueError(
        f"{ckpts.directory} holds checkpoints made with {bad[0]}={bad[1]!r} but the config asks "
        f"for {bad[2]!r}; use another --workdir or delete that directory")


def fit(task: Task, train_data, eval_sets: list[EvalSet], train_cfg, ckpt_dir: str, *,
        mesh, seed: int, writer: Writer | None = None, config_dict: dict | None = None,
        command: dict | None = None) -> tuple[checkpoint.Checkpoints, Trainer]:
  """Trains `task` to `train_cfg`'s step count in `ckpt_dir`, resuming from its latest step.

  A fresh directory gets `config.json` first: the task's meta, `config_dict` and the `command`
  (config file and overrides) that started the training, which results.json quotes for this
  model whichever later command evaluates it. Returns the checkpoint directory's manager and
  the trainer (whose compiled evaluation the report can reuse); a finished directory is
  returned untouched.
  """
  parallel.check_batch_size(int(train_cfg.batch_size), mesh)
  total = num_steps(train_cfg, train_data.num_examples("train"))
  ckpts = checkpoint.Checkpoints(ckpt_dir, keep=int(train_cfg.get("keep", 2)))
  check_meta(ckpts, task.meta)
  trainer = Trainer(task, train_cfg, mesh, total)
  if ckpts.is_finished(total):
    logging.info("[%s] finished checkpoint at step %d in %s: nothing to train", task.name,
                 ckpts.latest_step(), ckpt_dir)
    return ckpts, trainer

  restored = ckpts.restore_latest_good(*trainer.abstract()) if ckpts.steps() else None
  if restored is None:
    ckpts.write_config({"meta": task.meta, "config": config_dict or {},
                        "command": command or {}})
    state = trainer.init(jax.random.key(seed))
    logging.info("[%s] training from scratch for %d steps -> %s", task.name, total, ckpt_dir)
  else:
    latest, *state = restored
    state = tuple(state)
    logging.info("[%s] resuming at step %d/%d from %s", task.name, latest, total, ckpt_dir)

  start = int(jax.device_get(state[1]["step"]))
  batches = train_data.train_batches(int(train_cfg.batch_size), seed=seed, start_step=start,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
  device_batches = parallel.prefetch(batches, mesh)
  try:
    trainer.train(state, device_batches, ckpts, eval_sets,
                  writer, parallel.replicated_key(seed + 1, mesh))
  finally:
    device_batches.close()  # stops the prefetch thread
  return ckpts, trainer
