"""What every training stage does with a model's spec: train it (or resume, or skip it when
finished) and record its accuracies in results.json."""

from __future__ import annotations

from typing import TYPE_CHECKING

from absl import logging

from mlfd_jax import checkpoint, parallel, results, train
from mlfd_jax.evaluation import Evaluator, eval_batch_size
from mlfd_jax.stages.frozen import open_checkpoints
from mlfd_jax.stages.specs import ModelSpec

if TYPE_CHECKING:
  from mlfd_jax.stages.context import RunContext


def record_report(ctx: RunContext, spec: ModelSpec, ckpts: checkpoint.Checkpoints, *,
                  force: bool = False, evaluator: Evaluator | None = None) -> None:
  """Evaluates the best and last checkpoints and records them in results.json.

  Entries already recorded for the same checkpoint (steps and write time) are kept as they are
  unless `force`, so rerunning a finished command evaluates nothing again, while a retrained
  model is always evaluated anew. Nothing (teachers, joint teacher) is restored when nothing is
  evaluated. Pass the trainer's `evaluator` to reuse its compiled evaluation.
  """
  train.check_meta(ckpts, spec.meta)  # a finished directory of another model is not reused
  best, last = ckpts.best_step(), ckpts.latest_step()
  saved_at = ckpts.saved_at(last) if last is not None else None
  current = parallel.agree([results.is_current(ctx.workdir, es.name, spec.results_key, best,
                                               last, saved_at) for es in spec.eval_sets])
  todo = [es for es, done in zip(spec.eval_sets, current) if force or not done]
  if not todo:
    return
  evaluator = evaluator or Evaluator(spec.predict, spec.frozen(), ctx.mesh,
                                     eval_batch_size(spec.train_cfg),
                                     frozen_inputs=spec.frozen_inputs)
  abstract = train.abstract_variables(spec.init, ctx.mesh)
  made_by = training_command(ctx, ckpts)
  for name, entry in evaluator.report(ckpts, abstract, todo).items():
    logging.info("[%s] %s best step %d: val %.4f test top1 %.4f top5 %.4f (last step %d: "
                 "test top1 %.4f)", spec.results_key, name, entry["step"], entry["val_top1"],
                 entry["test_top1"], entry["test_top5"], entry["last"]["step"],
                 entry["last"]["test_top1"])
    entry.update(spec.extra, saved_at=saved_at, **made_by)
    results.record(ctx.workdir, config_path=ctx.config_path, seed=ctx.config.seed, dataset=name,
                   num_classes=spec.num_classes[name], model=spec.results_key, entry=entry,
                   order=ctx.names)


def training_command(ctx: RunContext, ckpts: checkpoint.Checkpoints) -> dict:
  """What results.json quotes as the command that made a model: the command that started its
  training, as its checkpoint directory's config.json records it, so that a model this run
  only evaluates (teachers copied from another workdir) is quoted with the command that trained
  it. `config` is given only where that command's config file differs from this run's.
  Directories written before the command was recorded get this command's overrides."""
  command = (ckpts.read_config() or {}).get("command") or {}
  if "overrides" not in command:
    return {"overrides": list(ctx.overrides)}
  made_by = {"overrides": list(command["overrides"])}
  if command.get("config", ctx.config_path) != ctx.config_path:
    made_by["config"] = command["config"]
  return made_by


def train_and_report(ctx: RunContext, spec: ModelSpec, loss,
                     gate_updates=train.keep_updates) -> None:
  """Trains (or resumes) the model `spec` describes with `loss`, and records its accuracies.

  A finished checkpoint directory is neither rebuilt nor retrained, and the frozen models the
  spec stands on are restored only if there is training or evaluating to do.
  """
  done = open_checkpoints(ctx.path(spec.directory))
  if done is not None:
    try:
      if done.is_finished(spec.total_steps):
        logging.info("[%s] finished (step %d): skipping training", spec.directory,
                     done.latest_step())
        record_report(ctx, spec, done)
        return
    finally:
      done.close()
  task = spec.task(loss, gate_updates)
  writer = ctx.writer(spec.directory)
  try:
    ckpts, trainer = train.fit(task, spec.train_data(), spec.eval_sets, spec.train_cfg,
                               ctx.path(spec.directory), mesh=ctx.mesh, seed=spec.seed,
                               writer=writer, config_dict=ctx.config.to_dict(),
                               command={"config": ctx.config_path,
                                        "overrides": list(ctx.overrides)})
  finally:
    writer.close()
  try:
    record_report(ctx, spec, ckpts, evaluator=trainer.evaluator)
  finally:
    ckpts.close()
