r"""Learning curves: validation top-1 against step, read from the workdirs' TensorBoard files.

  python -m mlfd_jax.curves runs/tin/seed0 runs/tin/seed1 runs/tin/seed2 --out curves.png

One panel per dataset, one line per model (`individual`, `joint_teacher`, `baseline_joint`, and
each student run: `mlfd`, `kd`, ...), the mean over the workdirs (one per seed) with a band from
the lowest to the highest run. A curve that still rises at its last step was not trained to
convergence. Reads `DIR/tensorboard/<stage>/<name>/` (see the README's workdir layout).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from mlfd_jax import cli, fileio, logs

STAGE_LABELS = {"teachers": "individual", "joint": "joint_teacher",
                "baseline_joint": "baseline_joint", "students": "mlfd"}


def label_of(stage_dir: str) -> str:
  """`teachers` -> individual, `students` -> mlfd, `students_kd` -> kd, ..."""
  if stage_dir in STAGE_LABELS:
    return STAGE_LABELS[stage_dir]
  if stage_dir.startswith("students_"):
    return stage_dir[len("students_"):]
  return stage_dir


def collect(workdirs: list[str]) -> dict[str, dict[str, list[list[tuple[int, float]]]]]:
  """{dataset: {model label: [validation curve of each workdir]}}."""
  table: dict[str, dict[str, list]] = {}
  for workdir in workdirs:
    root = fileio.join(workdir, "tensorboard")
    if not fileio.isdir(root):
      raise FileNotFoundError(f"no TensorBoard files at {root}")
    for stage in fileio.listdir(root):
      for name in fileio.listdir(fileio.join(root, stage)):
        scalars = logs.read_scalars(fileio.join(root, stage, name))
        per_head = {t.split("/", 1)[1]: v for t, v in scalars.items()
                    if t.startswith("val_top1/")}
        curves = per_head or ({name: scalars["val_top1"]} if "val_top1" in scalars else {})
        for dataset, curve in curves.items():
          table.setdefault(dataset, {}).setdefault(label_of(stage), []).append(sorted(curve))
  return table


def plot(table: dict, path: str, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  labels = sorted({m for row in table.values() for m in row},
                  key=lambda m: (m not in ("individual", "joint_teacher", "mlfd"), m))
  colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(labels)}
  fig, axes = plt.subplots(1, max(len(table), 1), squeeze=False,
                           figsize=(4.6 * max(len(table), 1), 3.8))
  for ax, dataset in zip(axes[0], sorted(table)):
    for label in labels:
      runs = table[dataset].get(label)
      if not runs:
        continue
      steps = sorted(set.intersection(*[{s for s, _ in r} for r in runs]))
      values = np.array([[dict(r)[s] for s in steps] for r in runs]) * 100
      ax.plot(steps, values.mean(0), color=colors[label], label=f"{label} (n={len(runs)})")
      if len(runs) > 1:
        ax.fill_between(steps, values.min(0), values.max(0), color=colors[label], alpha=0.15)
    ax.set_title(dataset)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("validation top-1 (%)")
  handles = {}
  for ax in axes[0]:
    for handle, label in zip(*ax.get_legend_handles_labels()):
      handles.setdefault(label.split(" (n=")[0], (handle, label))
  fig.legend([h for h, _ in handles.values()], [l for _, l in handles.values()], fontsize=8,
             loc="lower center", ncol=min(len(handles), 6))
  fig.suptitle(title)
  fig.tight_layout(rect=(0, 0.1, 1, 1))
  fileio.save_figure(fig, path, dpi=110)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workdirs", nargs="+", help="workdirs, e.g. one per seed")
  parser.add_argument("--out", required=True, help="the PNG to write")
  parser.add_argument("--title", default="validation top-1 (mean over runs, band: min-max)")
  args = parser.parse_args(argv)

  def body():
    table = collect(args.workdirs)
    fileio.makedirs(os.path.dirname(fileio.resolve(args.out)))
    plot(table, args.out, args.title)
    for dataset, row in sorted(table.items()):
      for label, runs in row.items():
        last = [r[-1][1] for r in runs]
        print(f"{dataset} {label}: last validation top-1 {100 * np.mean(last):.2f} "
              f"(n={len(runs)}, step {runs[0][-1][0]})")
    print(f"wrote {args.out}")
  return cli.run_tool("mlfd_jax.curves", body)


if __name__ == "__main__":
  sys.exit(main())
