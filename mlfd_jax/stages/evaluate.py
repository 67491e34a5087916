"""The `eval` stage: every checkpoint in the workdir, restored with Orbax, on val and test.

Writes `results.json` (best-by-validation and last step of every teacher, joint teacher head,
student of the configured distillation run and joint baseline found) and logs a table. Students
of other runs keep the entries recorded when they were trained. Run on its own it re-evaluates
everything; inside `all` it only fills entries that are missing or older than their checkpoints.
"""

from __future__ import annotations

from absl import logging

from mlfd_jax import results
from mlfd_jax.stages import common, specs
from mlfd_jax.stages.frozen import open_checkpoints

STAGE = "eval"
COLUMNS = ("teacher", "joint_teacher", "baseline_joint", "student")


def evaluate_workdir(ctx, *, force: bool = True) -> dict:
  """Records every checkpoint found under the workdir; returns the results dict. Finding none
  is an input error (a wrong --workdir), not an empty table."""
  found = 0
  for spec in [*specs.teachers(ctx), *specs.joints(ctx), *specs.students(ctx),
               specs.baseline(ctx)]:
    ckpts = open_checkpoints(ctx.path(spec.directory))
    if ckpts is None:
      continue
    try:
      if ckpts.latest_step() is not None:
        found += 1
        common.record_report(ctx, spec, ckpts, force=force)
    finally:
      ckpts.close()
  if not found:
    raise FileNotFoundError(f"nothing to evaluate: no checkpoint of this config's models in "
                            f"{ctx.workdir}; train them first with "
                            f"{ctx.command('all')}")
  res = results.load(ctx.workdir)
  logging.info("results (test top-1 of the best-by-validation checkpoint) in %s",
               results.path(ctx.workdir))
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


def run(ctx) -> None:
  evaluate_workdir(ctx, force=True)
