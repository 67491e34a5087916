"""Finding, checking and restoring the checkpoints a later stage stands on.

A later stage needs a *finished* checkpoint made for the model it expects. Every failure is one
line that names the directory, what is wrong, and the command that would make it right.
"""

from __future__ import annotations

import os

from mlfd_jax import checkpoint, parallel, train


def _command(config_path: str, workdir: str, stage: str) -> str:
  cfg = config_path or "configs/NAME.py"
  return f"python -m mlfd_jax.main --config={cfg} --workdir={workdir} --config.stage={stage}"


def restore_finished(task: train.Task, directory: str, *, what: str, stage: str, workdir: str,
                     config_path: str, train_cfg, num_train_examples: int, mesh):
  """The best-by-validation `model` variables of a finished run of `task` in `directory`."""
  make = _command(config_path, workdir, stage)
  if not parallel.agree(os.path.isdir(directory)):
    raise FileNotFoundError(f"no {what} checkpoint in {directory}; make it with: {make}")
  ckpts = checkpoint.Checkpoints(directory, read_only=True)
  try:
    latest = ckpts.latest_step()
    if latest is None:
      raise FileNotFoundError(f"no {what} checkpoint in {directory}; make it with: {make}")
    bad = checkpoint.meta_mismatch(ckpts.read_config(), task.meta)
    if bad:
      raise ValueError(f"{what} checkpoint in {directory} was made with {bad[0]}={bad[1]!r} but "
                       f"the config asks for {bad[2]!r}; retrain it with: {make} "
                       f"(after moving {directory} away)")
    total = train.num_steps(train_cfg, num_train_examples)
    if latest < total:
      raise ValueError(f"{what} in {directory} is unfinished (step {latest}/{total}); "
                       f"finish it with: {make}")
    return train.restore_model(ckpts, task, mesh, ckpts.best_step() or latest)
  finally:
    ckpts.close()
