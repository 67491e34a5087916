"""The pipeline's stages: `STAGES` maps `config.stage` to a `run(ctx)`.

Each stage module trains one kind of model from its specs (specs.py) and imports no other stage
module; this package imports them (downward) to register them, and defines `all`.
"""

from __future__ import annotations

import jax
from absl import logging

from mlfd_jax.registry import Registry
from mlfd_jax.stages import baselines, evaluate, joint, specs, students, teachers
from mlfd_jax.stages.frozen import open_checkpoints

STAGES: Registry = Registry("stage")
PIPELINE = (teachers, joint, students)  # what `all` trains, in order, before evaluating


def check_all(ctx) -> None:
  """Builds the spec of every model `all` trains: a bad value in a later stage's block
  (a method, a level, a model, a batch size, an optimizer) fails now, before the earlier
  stages' training. Then logs the plan: each model, how far it already is, the steps left."""
  planned = [*specs.teachers(ctx), *specs.joints(ctx), *specs.students(ctx)]
  for spec in planned:
    spec.check_training(ctx.mesh)
  log_plan(ctx, planned)


def log_plan(ctx, planned: list[specs.ModelSpec]) -> None:
  """One line a model and a total, so a long run says up front what it will do and a resumed
  one what is left."""
  total = left = 0
  for spec in planned:
    at, done = 0, open_checkpoints(ctx.path(spec.directory))
    if done is not None:
      try:
        at = min(done.latest_step() or 0, spec.total_steps)
      finally:
        done.close()
    state = ("finished" if at == spec.total_steps else f"resumes at step {at}" if at
             else "to train")
    logging.info("plan: %s, %d steps (%s)", spec.directory, spec.total_steps, state)
    total, left = total + spec.total_steps, left + spec.total_steps - at
  logging.info("plan: %d models, %d of their %d steps left to train", len(planned), left, total)


def run_check(ctx) -> None:
  """`check`: the checks `all` makes before training, and nothing else. A launcher that runs the
  stages one at a time (launch/seed_lanes.sh) checks each method's config this way first, so a
  bad value in a later command does not cost the hours of the earlier ones. Prints the
  configured datasets on stdout as `datasets: a,b,c`, which that launcher deals teachers from."""
  check_all(ctx)
  logging.info("config checked: every model `all` would train can be built; nothing trained")
  if jax.process_index() == 0:
    print(f"datasets: {','.join(ctx.names)}")


def run_all(ctx) -> None:
  """teachers -> joint -> students -> eval; finished stages are skipped, partial ones resumed."""
  check_all(ctx)
  for module in PIPELINE:
    logging.info("=== stage %s ===", module.STAGE)
    module.run(ctx)
  logging.info("=== stage eval ===")
  evaluate.evaluate_workdir(ctx, force=False)


def _without_teacher_datasets(name: str, run):
  """Stage `name`'s run, refusing `teacher_datasets`: it selects stage=teachers' teachers and
  nothing else, and a stage that ignored it (all trains every teacher, joint and eval use every
  one) would do other than the command says."""
  def checked(ctx) -> None:
    if ctx.config.get("teacher_datasets"):
      raise ValueError(f"teacher_datasets selects the teachers of stage=teachers only; "
                       f"stage={name} would ignore it: leave teacher_datasets empty")
    run(ctx)
  return checked


STAGES.add(teachers.STAGE, teachers.run)
for _name, _run in [(m.STAGE, m.run) for m in (joint, students, baselines, evaluate)] + [
    ("all", run_all), ("check", run_check)]:
  STAGES.add(_name, _without_teacher_datasets(_name, _run))
