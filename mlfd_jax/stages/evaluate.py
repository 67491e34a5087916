"""The `eval` stage: every checkpoint in the workdir, restored with Orbax, on val and test.

Writes `results.json` (best-by-validation and last step of every teacher, joint teacher head,
student and joint baseline found) and logs a table. Run on its own it re-evaluates everything;
inside `all` it only fills entries that are missing or older than their checkpoints.
"""

from __future__ import annotations

import os

from absl import logging

from mlfd_jax import checkpoint, results, train
from mlfd_jax.stages import STAGES, common, joint as joint_stage, students as students_stage
from mlfd_jax.stages import teachers as teachers_stage

STAGE = "eval"
COLUMNS = ("teacher", "joint_teacher", "student", "baseline_joint")


def _has_checkpoint(directory: str) -> bool:
  return os.path.isdir(directory) and any(p.isdigit() for p in os.listdir(directory))


def _report(task, directory, eval_sets, train_cfg, model, *, datasets_by_name, **kw):
  ckpts = checkpoint.Checkpoints(directory, read_only=True)
  try:
    common.record_report(task, ckpts, eval_sets, train_cfg, model=model,
                         num_classes={n: d.num_classes for n, d in datasets_by_name.items()},
                         **kw)
  finally:
    ckpts.close()


def evaluate_workdir(config, workdir: str, *, config_path: str = "", force: bool = True) -> dict:
  mesh = common.mesh(config)
  names = common.dataset_names(config)
  datasets = [common.build_dataset(config, n) for n in names]
  by_name = dict(zip(names, datasets))
  args = dict(mesh=mesh, workdir=workdir, config_path=config_path, config=config,
              datasets_by_name=by_name, force=force)

  for name, ds in by_name.items():
    d = common.stage_dir(workdir, teachers_stage.STAGE, name)
    if _has_checkpoint(d):
      _report(teachers_stage.teacher_task(config, name, ds), d, [train.EvalSet(name, ds)],
              config.teacher_train, model="teacher", **args)

  teacher_dirs = [common.stage_dir(workdir, teachers_stage.STAGE, n) for n in names]
  if all(_has_checkpoint(d) for d in teacher_dirs):
    teacher_vars = None
    for target, heads in joint_stage.targets(config, names):
      d = common.stage_dir(workdir, joint_stage.STAGE, target)
      if not _has_checkpoint(d):
        continue
      if teacher_vars is None:
        teacher_vars = joint_stage.load_teachers(config, workdir, names, datasets, mesh,
                                                 config_path)
      task = joint_stage.build_task(config, workdir, names, datasets, mesh, config_path, heads,
                                    teacher_vars)
      eval_sets = [train.EvalSet(names[i], datasets[i], head=h) for h, i in enumerate(heads)]
      _report(task, d, eval_sets, config.joint_train, model="joint_teacher", **args)

  for i, (name, ds) in enumerate(by_name.items()):
    d = common.stage_dir(workdir, students_stage.STAGE, name)
    if not _has_checkpoint(d):
      continue
    joint, frozen, head, _ = students_stage.joint_for(config, workdir, names, datasets, mesh,
                                                      config_path, i)
    task = students_stage.student_task(config, name, ds, joint, frozen, head)
    _report(task, d, [train.EvalSet(name, ds)], config.student_train, model="student", **args)

  res = results.load(workdir)
  logging.info("results (test top-1, best-by-val checkpoint) in %s:\n%s",
               results.path(workdir), format_table(res))
  print(format_table(res), flush=True)
  return res


def format_table(res: dict) -> str:
  """A fixed-width table: one row per dataset, one column per trained model."""
  cols = [c for c in COLUMNS if any(c in d for d in res.get("datasets", {}).values())]
  rows = [["dataset", *cols]]
  for name, entry in res.get("datasets", {}).items():
    rows.append([name, *(f"{entry[c]['test_top1']:.4f}" if c in entry else "-" for c in cols)])
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows)


@STAGES.register(STAGE)
def run(config, workdir: str, *, config_path: str = "") -> None:
  evaluate_workdir(config, workdir, config_path=config_path, force=True)


@STAGES.register("all")
def run_all(config, workdir: str, *, config_path: str = "") -> None:
  """teachers -> joint -> students -> eval; finished stages are skipped, partial ones resumed."""
  for stage in (teachers_stage.STAGE, joint_stage.STAGE, students_stage.STAGE):
    logging.info("=== stage %s ===", stage)
    STAGES.get(stage)(config, workdir, config_path=config_path)
  logging.info("=== stage eval ===")
  evaluate_workdir(config, workdir, config_path=config_path, force=False)


