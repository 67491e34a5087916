r"""Accuracy against training budget: does a gap close as every model trains longer?

  python -m mlfd_jax.budgets 600=runs/tin/seed0 600=runs/tin/seed1 \
      1200=runs/tin_b2/seed0 2400=runs/tin_b4/seed0 --out docs/tin/budgets

Each argument is `STEPS=WORKDIR` (or `STEPS=results.json`): one run (one seed) made at that
budget. For every dataset, `budgets.md` gives each model's test top-1 per budget (mean ± std,
and each seed's value) and the paired per-seed difference of each compared model to `base`
(default `individual`), then how that difference changes from one budget to a longer one on the
same seed (does a lead grow or shrink with training?), per dataset and pooled over datasets
with each seed one unit; `budgets.png` draws the first two: one panel per dataset with every
model's mean against steps (dots: the seeds), and one panel of the paired differences with a
zero line.
"""

from __future__ import annotations

import argparse
import itertools
import sys

import numpy as np

from mlfd_jax import cli, fileio, report

DEFAULT_MODELS = ("individual", "joint_teacher", "mlfd")


def load(specs: list[str]) -> dict[int, list[dict]]:
  """{steps: [run]} from `STEPS=PATH` arguments."""
  by_budget: dict[int, list[dict]] = {}
  for spec in specs:
    steps, sep, path = spec.partition("=")
    if not sep or not steps.isdigit() or int(steps) <= 0:
      raise ValueError(f"argument {spec!r} is not STEPS=WORKDIR (e.g. 600=runs/tin/seed0)")
    by_budget.setdefault(int(steps), []).extend(report.load_runs([path]))
  return dict(sorted(by_budget.items()))


def table(per_budget: dict[int, dict], models: tuple[str, ...]
          ) -> dict[str, dict[str, dict[int, dict[str, float]]]]:
  """{dataset: {model: {steps: {seed label: test top-1}}}} for the requested models, from
  each budget's `report.per_run` table."""
  out: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
  for steps, per_run in per_budget.items():
    for dataset, row in per_run.items():
      for model in models:
        if model in row:
          out.setdefault(dataset, {}).setdefault(model, {})[steps] = row[model]
  return out


def differences(values: dict, base: str) -> dict[str, dict[str, dict[int, dict[str, float]]]]:
  """{dataset: {model: {steps: {seed: model - base}}}}, over the seeds that hold both."""
  out: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
  for dataset, row in values.items():
    for model, by_steps in row.items():
      if model == base or base not in row:
        continue
      for steps, by_seed in by_steps.items():
        base_values = row[base].get(steps, {})
        common = [s for s in by_seed if s in base_values]
        if common:
          out.setdefault(dataset, {}).setdefault(model, {})[steps] = {
              s: by_seed[s] - base_values[s] for s in common}
  return out


def changes(diffs: dict) -> dict[str, dict[str, dict[tuple[int, int], dict[str, float]]]]:
  """{dataset: {model: {(steps, more steps): {seed: difference there - difference here}}}},
  for every two budgets, over the seeds that hold both: a seed's pairs at two budgets share
  the seed, so the change is paired too."""
  out: dict[str, dict[str, dict[tuple[int, int], dict[str, float]]]] = {}
  for dataset, row in diffs.items():
    for model, by_steps in row.items():
      steps = sorted(by_steps)
      for lo, hi in itertools.combinations(steps, 2):
        common = [s for s in by_steps[lo] if s in by_steps[hi]]
        if common:
          out.setdefault(dataset, {}).setdefault(model, {})[(lo, hi)] = {
              s: by_steps[hi][s] - by_steps[lo][s] for s in common}
  return out


def pooled_changes(change: dict) -> dict[str, dict[tuple[int, int], dict[str, float]]]:
  """{model: {(steps, more steps): {seed: mean change over the datasets that seed holds}}}:
  the datasets of one seed share its teachers' data order, so the seed is the unit."""
  lists: dict[str, dict[tuple[int, int], dict[str, list[float]]]] = {}
  for row in change.values():
    for model, by_pair in row.items():
      for pair, by_seed in by_pair.items():
        for seed, value in by_seed.items():
          lists.setdefault(model, {}).setdefault(pair, {}).setdefault(seed, []).append(value)
  return {model: {pair: {seed: float(np.mean(by_seed[seed]))
                         for seed in sorted(by_seed, key=report.label_order)}
                  for pair, by_seed in by_pair.items()} for model, by_pair in lists.items()}


def _summary(by_seed: dict[str, float], signed: bool) -> str:
  mu, sd = report.mean_std(list(by_seed.values()))
  fmt = "{:+.2f}" if signed else "{:.2f}"
  text = fmt.format(100 * mu) + (f" ± {100 * sd:.2f}" if len(by_seed) > 1 else "")
  if signed:
    return text + f" ({sum(v > 0 for v in by_seed.values())} of {len(by_seed)} > 0)"
  return text + f" (n={len(by_seed)})"


def format_markdown(values: dict, diffs: dict, base: str, change: dict | None = None) -> str:
  seeds = sorted({s for row in values.values() for m in row.values() for b in m.values()
                  for s in b}, key=report.label_order)
  head = ["| dataset | model | steps | mean ± std | " + " | ".join(seeds) + " |",
          "|---|---|---|---|" + "---|" * len(seeds)]
  lines = ["# Test top-1 (%) against training budget", "", *head]

  def rows(source: dict, signed: bool, name) -> list[str]:
    fmt = "{:+.2f}" if signed else "{:.2f}"
    out = []
    for dataset in sorted(source):
      for model, by_steps in source[dataset].items():
        for steps, by_seed in by_steps.items():
          cells = [fmt.format(100 * by_seed[s]) if s in by_seed else "—" for s in seeds]
          out.append(f"| {dataset} | {name(model)} | {steps} | {_summary(by_seed, signed)} | "
                     + " | ".join(cells) + " |")
    return out

  lines += rows(values, False, lambda m: m)
  lines += ["", f"## Paired difference to `{base}` (same seed and budget), points", "", *head]
  lines += rows(diffs, True, lambda m: f"{m} − {base}")
  if change:
    lines += ["", f"## Change of each difference to `{base}` from one budget to a longer one "
              "(same seed), points", "", *head]
    lines += rows({d: {m: {f"{lo} → {hi}": v for (lo, hi), v in by_pair.items()}
                       for m, by_pair in row.items()} for d, row in change.items()},
                  True, lambda m: f"{m} − {base}")
    lines += ["", "Pooled over the datasets, each seed one unit (its datasets' mean change):",
              "", "| comparison | steps | per seed | mean ± se, t (df) |", "|---|---|---|---|"]
    for model, by_pair in pooled_changes(change).items():
      for (lo, hi), by_seed in by_pair.items():
        per_seed = ", ".join(f"{s} {100 * v:+.2f}" for s, v in by_seed.items())
        summary = report.format_mean_se_t(list(by_seed.values()))
        lines.append(f"| {model} − {base} | {lo} → {hi} | {per_seed} | {summary} |")
  return "\n".join(lines) + "\n"


def plot(values: dict, diffs: dict, base: str, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  datasets = sorted(values)
  models = report.methods_of(values)
  colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
  n_diffs = sum(len(row) for row in diffs.values())
  rows = -(-n_diffs // max(len(diffs), 1))  # the differences' legend: one column a dataset
  fig, axes = plt.subplots(1, len(datasets) + 1, squeeze=False,
                           figsize=(4.2 * (len(datasets) + 1), 3.8 + 0.2 * rows))

  def draw(ax, by_steps, color, label, style="-", offset=0.0):
    steps = sorted(by_steps)
    means = [100 * np.mean(list(by_steps[s].values())) for s in steps]
    ax.plot(steps, means, style, marker="o", color=color, label=label, markersize=4)
    for s in steps:
      ys = [100 * v for v in by_steps[s].values()]
      ax.scatter([s * (1 + offset)] * len(ys), ys, color=color, s=10, alpha=0.5)

  for ax, dataset in zip(axes[0], datasets):
    for model in models:
      if model in values[dataset]:
        draw(ax, values[dataset][model], colors[model], model)
    ax.set_title(dataset)
    ax.set_ylabel("test top-1 (%)")
  ax = axes[0][-1]
  ax.axhline(0.0, color="black", linewidth=0.8)
  styles = ("-", "--", ":", "-.")
  for i, dataset in enumerate(sorted(diffs)):
    for model, by_steps in diffs[dataset].items():
      draw(ax, by_steps, colors[model], f"{dataset}: {model} − {base}",
           style=styles[i % len(styles)], offset=0.03 * i)
  ax.set_title(f"paired difference to {base}")
  ax.set_ylabel("points")
  budgets = sorted({s for row in values.values() for m in row.values() for s in m})
  for ax in axes[0]:
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("steps per model")
    ax.grid(alpha=0.3)
  for ax in axes[0][:-1]:
    ax.legend(fontsize=7)
  # Below the panels, so that it hides none of the differences it names.
  fig.legend(*axes[0][-1].get_legend_handles_labels(), fontsize=7, loc="lower center",
             ncol=max(len(diffs), 1))
  fig.suptitle("test top-1 against training budget (line: mean over seeds; dots: each seed)")
  fig.tight_layout(rect=(0, 0.2 * rows / (3.8 + 0.2 * rows) + 0.02, 1, 1))
  fileio.save_figure(fig, path, dpi=110)
  plt.close(fig)


def write(specs: list[str], out: str, models: tuple[str, ...] | None, base: str
          ) -> dict[str, str]:
  """budgets.md and budgets.png in `out`; `models` None: those of DEFAULT_MODELS the runs hold.
  A model named explicitly (or the base) that no run holds is an error, not an empty row."""
  per_budget = {steps: report.per_run(runs) for steps, runs in load(specs).items()}
  held = sorted({m for per_run in per_budget.values() for row in per_run.values() for m in row})
  named = (base,) if models is None else (*models, base)
  for name in dict.fromkeys(named):
    if name not in held:
      raise ValueError(f"no run has a model {name!r} (--models, --base); they have: "
                       f"{', '.join(held)}")
  values = table(per_budget, models or DEFAULT_MODELS)
  diffs = differences(values, base)
  fileio.makedirs(out)
  files = {"md": fileio.join(out, "budgets.md"), "png": fileio.join(out, "budgets.png")}
  fileio.write_atomic(files["md"], format_markdown(values, diffs, base, changes(diffs)))
  plot(values, diffs, base, files["png"])
  return files


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("runs", nargs="+", help="STEPS=WORKDIR, one per (budget, seed)")
  parser.add_argument("--out", required=True, help="directory for budgets.md and budgets.png")
  parser.add_argument("--models", default=None,
                      help="comma-separated report columns (individual, joint_teacher, mlfd, "
                           f"kd, ...); default: those of {','.join(DEFAULT_MODELS)} the runs hold")
  parser.add_argument("--base", default="individual", help="the model the others are paired with")
  args = parser.parse_args(argv)
  models = tuple(m for m in args.models.split(",") if m) if args.models else None

  def body():
    files = write(args.runs, args.out, models, args.base)
    print(fileio.read_text(files["md"]))
    print(f"wrote {files['md']} and {files['png']}")
  return cli.run_tool("mlfd_jax.budgets", body)


if __name__ == "__main__":
  sys.exit(main())
