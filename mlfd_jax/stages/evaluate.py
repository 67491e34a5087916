"""The `eval` stage: every checkpoint in the workdir, restored with Orbax, on val and test.

Writes `results.json` (best-by-validation and last step of every teacher, joint teacher head,
student of the configured distillation run and joint baseline found) and logs a table. Students
of other runs keep the entries recorded when they were trained. Run on its own it re-evaluates everything;
inside `all` it only fills entries that are missing or older than their checkpoints.
"""

from __future__ import annotations

import os

from absl import logging

from mlfd_jax import checkpoint, parallel, results, train
from mlfd_jax.distill import base as distill_base
from mlfd_jax.stages import STAGES, baselines, common, joint as joint_stage
from mlfd_jax.stages import students as students_stage
from mlfd_jax.stages import teachers as teachers_stage

STAGE = "eval"
COLUMNS = ("teacher", "joint_teacher", "baseline_joint", "student")


def _has_checkpoint(directory: str) -> bool:
  return parallel.agree(os.path.isdir(directory) and
                       any(p.isdigit() for p in os.listdir(directory)))


def evaluate_workdir(config, workdir: str, *, config_path: str = "", force: bool = True) -> dict:
  """Records every checkpoint found under `workdir`; returns the results dict."""
  mesh = common.mesh(config)
  names = common.dataset_names(config)
  datasets = [common.build_dataset(config, n) for n in names]
  frozen = students_stage.FrozenModels(config, workdir, names, datasets, mesh, config_path)
  num_classes = {n: d.num_classes for n, d in zip(names, datasets)}

  def report(make_task, stage, target, eval_sets, train_cfg, model, extra=None):
    directory = common.stage_dir(workdir, stage, target)
    if not _has_checkpoint(directory):
      return
    ckpts = checkpoint.Checkpoints(directory, read_only=True)
    try:
      common.record_report(make_task, ckpts, eval_sets, train_cfg, mesh=mesh, workdir=workdir,
                           config_path=config_path, config=config, model=model,
                           num_classes=num_classes, force=force, extra=extra)
    finally:
      ckpts.close()

  for name, ds in zip(names, datasets):
    report(lambda: teachers_stage.teacher_task(config, name, ds), teachers_stage.STAGE, name,
           [train.EvalSet(name, ds)], config.teacher_train, "teacher")
  for target, heads in joint_stage.targets(config, names):
    report(lambda: joint_stage.build_task(config, workdir, names, datasets, mesh, config_path,
                                          heads, frozen.teachers()),
           joint_stage.STAGE, target,
           [train.EvalSet(names[i], datasets[i], head=h) for h, i in enumerate(heads)],
           config.joint_train, "joint_teacher")
  student_stage = distill_base.stage_dirname(config.distill)
  for i, (name, ds) in enumerate(zip(names, datasets)):
    if name in students_stage.student_datasets(config, names):
      report(lambda: students_stage.student_task(config, name, ds, *frozen.sources_for(i)),
             student_stage, name, [train.EvalSet(name, ds)], config.student_train,
             distill_base.results_key(config.distill), extra=students_stage.run_info(config))

  report(lambda: baselines.baseline_task(config, names, datasets), baselines.STAGE,
         baselines.NAME,
         [train.EvalSet(n, d, head=i) for i, (n, d) in enumerate(zip(names, datasets))],
         config.student_train, baselines.STAGE)

  res = results.load(workdir)
  logging.info("results (test top-1 of the best-by-validation checkpoint) in %s",
               results.path(workdir))
  print(format_table(res), flush=True)
  return res


def format_table(res: dict) -> str:
  """A fixed-width table: one row per dataset, one column per trained model."""
  found = {k for d in res.get("datasets", {}).values() for k, v in d.items()
           if isinstance(v, dict)}
  cols = [c for c in COLUMNS if c in found] + sorted(found - set(COLUMNS))
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


