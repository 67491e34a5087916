"""What every stage needs from the config: datasets, models, mesh, paths, writers."""

from __future__ import annotations

import os

from absl import logging

from mlfd_jax import checkpoint, data, logs, modelfn, parallel, results, train


def dataset_names(config) -> list[str]:
  """Datasets in a fixed order (sorted by name): it defines joint-teacher head indices."""
  names = list(config.datasets.keys())
  if not names:
    raise ValueError("config.datasets is empty: configure at least one dataset")
  return names


def build_dataset(config, name: str):
  if name not in config.datasets:
    raise ValueError(f"unknown dataset {name!r}; configured: {', '.join(dataset_names(config))}")
  block = dict(config.datasets[name].to_dict())
  block.setdefault("name", name)
  return data.build_dataset(block)


def model_block(config, group: str, name: str) -> dict:
  """The model config of dataset `name` in `config.<group>` (`teachers` or `students`)."""
  blocks = config[group]
  if name not in blocks:
    raise ValueError(f"config.{group} has no model for dataset {name!r}; "
                     f"it has: {', '.join(blocks.keys()) or 'none'}")
  return dict(blocks[name].to_dict())


def model_fn(block: dict, *, num_classes: int, image_size: int, train_cfg) -> modelfn.ModelFn:
  return modelfn.from_config(block, num_classes=num_classes, image_size=image_size,
                             dtype=modelfn.compute_dtype(train_cfg.get("dtype", "float32")))


def mesh(config):
  return parallel.make_mesh(int(config.get("num_devices", 0) or 0) or None)


def stage_dir(workdir: str, stage: str, name: str) -> str:
  return os.path.join(workdir, stage, name)


def writer(workdir: str, stage: str, name: str):
  return logs.make_writer(os.path.join(workdir, "tensorboard", stage, name))


def record_report(task, ckpts, eval_sets, train_cfg, *, mesh, workdir: str, config_path: str,
                  config, model: str, num_classes: dict[str, int], force: bool = False,
                  trainer=None, extra: dict | None = None) -> None:
  """Evaluates best and last checkpoints and records them in results.json as `model`.

  Entries already recorded for the same checkpoint (steps and write time) are kept as they are
  unless `force`, so rerunning a finished command evaluates nothing again, while a retrained
  model is always evaluated anew. `task` may be a zero-argument function returning
  the task, so that nothing (teachers, joint teacher) is restored when nothing is evaluated.
  `extra` is stored in each entry (a student's method, levels and run name).
  """
  best, last = ckpts.best_step(), ckpts.latest_step()
  saved_at = ckpts.saved_at(last) if last is not None else None
  current = parallel.agree([results.is_current(workdir, es.name, model, best, last, saved_at)
                            for es in eval_sets])
  todo = [es for es, done in zip(eval_sets, current) if force or not done]
  if not todo:
    return
  if not isinstance(task, train.Task):
    task = task()  # built only when something needs evaluating
  for name, entry in train.report(task, ckpts, todo, train_cfg, mesh, trainer).items():
    logging.info("[%s] %s best step %d: val %.4f test top1 %.4f top5 %.4f (last step %d: "
                 "test top1 %.4f)", model, name, entry["step"], entry["val_top1"],
                 entry["test_top1"], entry["test_top5"], entry["last"]["step"],
                 entry["last"]["test_top1"])
    entry.update(extra or {}, saved_at=saved_at)
    results.record(workdir, config_path=config_path, seed=config.seed, dataset=name,
                   num_classes=num_classes[name], model=model, entry=entry)


def train_and_report(make_task, train_data, eval_sets, train_cfg, *, stage: str, name: str,
                     workdir: str, config, config_path: str, mesh, seed: int, model: str,
                     num_classes: dict[str, int], extra: dict | None = None) -> None:
  """Trains (or resumes) one model of a stage and records its accuracies.

  A finished checkpoint directory is neither rebuilt nor retrained: `make_task` (which may have
  to restore frozen teachers) runs only if there is training or evaluating to do.
  """
  directory = stage_dir(workdir, stage, name)
  total = train.num_steps(train_cfg, train_data.num_examples("train"))
  report = dict(mesh=mesh, workdir=workdir, config_path=config_path, config=config, model=model,
                num_classes=num_classes, extra=extra)
  if parallel.agree(os.path.isdir(directory)):
    done = checkpoint.Checkpoints(directory, read_only=True)
    try:
      latest = done.latest_step()
      if latest is not None and latest >= total:
        logging.info("[%s/%s] finished (step %d): skipping training", stage, name, latest)
        record_report(make_task, done, eval_sets, train_cfg, **report)
        return
    finally:
      done.close()
  task = make_task()
  metric_writer = writer(workdir, stage, name)
  try:
    ckpts, trainer = train.fit(task, train_data, eval_sets, train_cfg, directory, mesh=mesh,
                               seed=seed, writer=metric_writer, config_dict=config.to_dict())
  finally:
    metric_writer.close()
  try:
    record_report(task, ckpts, eval_sets, train_cfg, trainer=trainer, **report)
  finally:
    ckpts.close()
