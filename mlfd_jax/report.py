r"""results.json files -> results.md (mean ± std over runs) and a PNG bar chart.

  python -m mlfd_jax.report runs/trio/seed* --out reports/trio

Each argument is a workdir (or a results.json). The workdirs of one seed (methods trained side
by side in copies of a workdir) are merged into one run; `--runs_out DIR` writes each merged run
as `DIR/seedN.results.json`. Runs are grouped by (dataset, method); a method
is a model kind of results.json (`teacher` is reported as `individual`), with students labelled
by their distillation run (`mlfd`, `mlfd_last`, `kd`, `amtml`, `feed`, ...).
An argument `GROUP=PATH` prefixes that run's columns with `GROUP:` so that ablation workdirs
(launch/ablations.sh) sit beside the runs they vary. Two tables are written: the
best-by-validation checkpoints and the last checkpoints. A method
that a dataset has no run of shows as `—`, never as zero.

The paired summary pools every (dataset, run) pair of a comparison (`mlfd` − `individual` by
default for every method; `--pair A B` adds A − B): how many pairs are above zero, their mean
and spread, and a t statistic that treats each run's mean as one independent unit (the datasets
of one run share its seed and teachers, so they are not independent of each other).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Iterable

import numpy as np

from mlfd_jax import cli, fileio

ORDER = ("individual", "baseline_joint", "joint_teacher", "kd", "mlfd_last", "mlfd", "avg_kd",
         "amtml", "feed", "feed_seq")
RENAME = {"teacher": "individual"}


def method_label(model: str, entry: dict) -> str:
  """The column of a results.json entry: `individual`, `joint_teacher`, `baseline_joint`, or a
  student's run name (`mlfd`, `mlfd_last`, `kd`, `amtml`, ...; `mlfd[stage3,stage4]` for an
  mlfd run over other levels that was not given its own name)."""
  if not model.startswith("student"):
    return RENAME.get(model, model)
  method = entry.get("method") or (model[len("student_"):] if "_" in model else "mlfd")
  name = entry.get("name") or method
  levels = entry.get("levels", "all")
  if name == "mlfd" and levels not in ("all", "", None):
    return f"mlfd[{levels}]"
  return name


def column(run: dict, model: str, entry: dict) -> str:
  """The table column of one entry of `run`: its method label, `GROUP:label` in a tagged run."""
  label = method_label(model, entry)
  return f"{run['_group']}:{label}" if run.get("_group") else label


def load_runs(paths: Iterable[str]) -> list[dict]:
  """Each path's results, one run per (seed, group): the workdirs of one seed (methods trained
  side by side in copies of a workdir) are merged into one run, so a seed counts once in every
  mean and pairs across all of them. `GROUP=PATH` tags a run so its methods show as
  `GROUP:method`."""
  runs: list[dict] = []
  for path in paths:
    group = ""
    if "=" in path and not fileio.exists(path):
      group, path = path.split("=", 1)
    file = fileio.join(path, "results.json") if fileio.isdir(path) else path
    if not fileio.exists(file):
      raise FileNotFoundError(f"no results.json at {file}")
    try:
      run = json.loads(fileio.read_text(file))
    except json.JSONDecodeError as e:
      raise ValueError(f"{file} is not valid JSON ({e})") from None
    same = [r for r in runs if run.get("seed") is not None
            and (r.get("seed"), r["_group"]) == (run.get("seed"), group)]
    if same:
      merge_into(same[0], run, file)
    else:
      runs.append({**run, "_group": group, "_files": [file]})
  return runs


def merge_into(run: dict, other: dict, file: str) -> None:
  """Adds `other`'s entries (from `file`) to `run`, a run of the same seed and group. An entry
  both hold must be the same (a workdir copied before its other methods trained holds the same
  teachers): two different results for one model and seed are refused, not averaged, and so
  are two configs."""
  if other.get("config") != run.get("config"):
    raise ValueError(
        f"{file} ({other.get('config')}) and {run['_files'][0]} ({run.get('config')}) are both "
        f"seed {run['seed']} of different configs; tag one GROUP=PATH to compare them")
  for dataset, models in other.get("datasets", {}).items():
    mine = run.setdefault("datasets", {}).setdefault(dataset, {})
    for model, entry in models.items():
      if model in mine and mine[model] != entry and isinstance(entry, dict):
        raise ValueError(
            f"{file} and {', '.join(run['_files'])} (both seed {run['seed']}) hold different "
            f"{dataset}.{model} results; pass one of them, or tag one GROUP=PATH to compare them")
      mine.setdefault(model, entry)
  run["_files"].append(file)


def write_runs(runs: list[dict], out: str) -> list[str]:
  """Each run as one results.json, `out/[GROUP_]seedN.results.json`: the merged copy of a seed's
  workdirs, small enough to commit beside a report and to report from again."""
  fileio.makedirs(out)
  written = []
  for i, run in enumerate(runs):
    prefix = f"{run['_group']}_" if run["_group"] else ""
    file = fileio.join(out, f"{prefix}{run_label(run, i)}.results.json")
    fileio.write_json_atomic(file, {k: v for k, v in run.items() if not k.startswith("_")})
    written.append(file)
  return written


def checkpoint(entry: dict, which: str) -> dict:
  """The metrics of a results.json entry's best-by-validation (`best`) or `last` checkpoint."""
  return entry if which == "best" else entry.get("last", {})


def collect(runs: list[dict], which: str = "best", metric: str = "test_top1"
            ) -> dict[str, dict[str, list[float]]]:
  """{dataset: {method: [value per run]}} for the best-by-val (`best`) or `last` checkpoints."""
  table: dict[str, dict[str, list[float]]] = {}
  for run in runs:
    for dataset, models in run.get("datasets", {}).items():
      row = table.setdefault(dataset, {})
      for model, entry in models.items():
        if not isinstance(entry, dict):
          continue  # num_classes
        source = checkpoint(entry, which)
        if metric in source:
          row.setdefault(column(run, model, entry), []).append(float(source[metric]))
  return table


def run_label(run: dict, index: int) -> str:
  """A run's column in per-run tables: `seed<N>`, else its position. Runs of one seed in
  different groups (ablations beside their baseline run) share the column, so their methods
  (`GROUP:method`) pair with the baseline's `individual` of that seed."""
  seed = run.get("seed")
  return f"seed{seed}" if seed is not None else f"run{index}"


def label_order(label: str) -> tuple:
  """Sort key of run labels with their numbers read as numbers: seed2 before seed10."""
  return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", label))


def per_run(runs: list[dict], metric: str = "test_top1", which: str = "best"
            ) -> dict[str, dict[str, dict[str, float]]]:
  """{dataset: {method: {run label: value}}} of the best-by-validation (`best`) or `last`
  checkpoints."""
  table: dict[str, dict[str, dict[str, float]]] = {}
  for i, run in enumerate(runs):
    label = run_label(run, i)
    for dataset, models in run.get("datasets", {}).items():
      row = table.setdefault(dataset, {})
      for model, entry in models.items():
        if not isinstance(entry, dict):
          continue
        source = checkpoint(entry, which)
        if metric in source:
          row.setdefault(column(run, model, entry), {})[label] = float(source[metric])
  return table


def paired_differences(values: dict[str, dict[str, dict[str, float]]], base: str = "individual"
                       ) -> dict[str, dict[str, dict[str, float]]]:
  """{dataset: {method: {run: method - base}}} over the runs (one results.json each, so one
  seed: teacher i and student i share it) that hold both."""
  out: dict[str, dict[str, dict[str, float]]] = {}
  for dataset, row in values.items():
    if base not in row:
      continue
    for method, by_run in row.items():
      common = [r for r in by_run if r in row[base]]
      if method != base and common:
        out.setdefault(dataset, {})[method] = {r: by_run[r] - row[base][r] for r in common}
  return out


def pair_summary(values: dict[str, dict[str, dict[str, float]]], a: str, b: str
                 ) -> dict | None:
  """a − b over every (dataset, run) pair that holds both: the pairs' count, signs, mean and
  std, and each run's mean (the independent units: `format_mean_se_t`); None when no pair
  holds both."""
  by_run: dict[str, list[float]] = {}
  for row in values.values():
    if a in row and b in row:
      for r, v in row[a].items():
        if r in row[b]:
          by_run.setdefault(r, []).append(v - row[b][r])
  pairs = np.asarray([d for ds in by_run.values() for d in ds], np.float64)
  if not pairs.size:
    return None
  tol = 1e-9  # accuracies are multiples of 1/N: a level pair is an exact tie up to rounding
  run_means = {r: float(np.mean(by_run[r])) for r in sorted(by_run, key=label_order)}
  return {"pairs": int(pairs.size), "above": int((pairs > tol).sum()),
          "level": int((np.abs(pairs) <= tol).sum()), "below": int((pairs < -tol).sum()),
          "mean": float(pairs.mean()), "std": float(pairs.std(ddof=1)) if pairs.size > 1 else 0.0,
          "run_means": run_means}


def format_mean_se_t(values: list[float]) -> str:
  """Points: the mean of independent units (seeds) ± its standard error, and t on n − 1
  degrees of freedom; where there is no t, why."""
  x = np.asarray(values, np.float64)
  if x.size < 2:
    return f"{100 * x.mean():+.2f}, one run: no spread to test"
  se = x.std(ddof=1) / np.sqrt(x.size)
  text = f"{100 * x.mean():+.2f} ± {100 * se:.2f}"
  return (text + ": every run alike, no t" if se == 0 else
          text + f", t = {x.mean() / se:.1f} ({x.size - 1})")


def format_pair_summary(values: dict, pairs: list[tuple[str, str]], title: str) -> str:
  """One row per comparison with at least one pair (format of `pair_summary`), in points."""
  lines = [f"### {title}", "",
           "| comparison | pairs | > 0 / level / < 0 | mean ± std over pairs | "
           "mean per run | mean of the runs ± se, t (df) |", "|---|---|---|---|---|---|"]
  for a, b in pairs:
    s = pair_summary(values, a, b)
    if s is None:
      continue
    spread = f" ± {100 * s['std']:.2f}" if s["pairs"] > 1 else ""
    runs = ", ".join(f"{r} {100 * m:+.2f}" for r, m in s["run_means"].items())
    t = format_mean_se_t(list(s["run_means"].values()))
    lines.append(f"| {a} − {b} | {s['pairs']} | {s['above']} / {s['level']} / {s['below']} | "
                 f"{100 * s['mean']:+.2f}{spread} | {runs} | {t} |")
  return "\n".join(lines) + "\n"


def default_pairs(values: dict, extra: Iterable[tuple[str, str]] = (),
                  base: str = "individual") -> list[tuple[str, str]]:
  """Every method against `base`, then the `extra` comparisons in the order given, each once."""
  pairs = [(m, base) for m in methods_of(values) if m != base] + list(extra)
  return list(dict.fromkeys(pairs))


def format_per_run(values: dict, title: str, *, signed: bool = False) -> str:
  """One row per (dataset, method): mean ± std, then each run's value."""
  runs = sorted({r for row in values.values() for by_run in row.values() for r in by_run},
                key=label_order)
  lines = [f"### {title}", "", "| dataset | method | mean ± std | " + " | ".join(runs) + " |",
           "|---|---|---|" + "---|" * len(runs)]
  fmt = "{:+.2f}" if signed else "{:.2f}"
  for dataset, row in values.items():
    for method in methods_of({dataset: row}):
      by_run = row[method]
      mu, sd = mean_std(list(by_run.values()))
      summary = (f"{fmt.format(100 * mu)} ± {100 * sd:.2f}" if len(by_run) > 1 else
                 fmt.format(100 * mu))
      if signed:
        wins = sum(v > 0 for v in by_run.values())
        summary += f" ({wins}/{len(by_run)} > 0)"
      cells = [fmt.format(100 * by_run[r]) if r in by_run else "—" for r in runs]
      lines.append(f"| {dataset} | {method} | {summary} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def methods_of(table: dict) -> list[str]:
  found = {m for row in table.values() for m in row}
  return [m for m in ORDER if m in found] + sorted(found - set(ORDER))


def mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single run)."""
  a = np.asarray(values, np.float64)
  return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def format_markdown(table: dict, title: str) -> str:
  methods = methods_of(table)
  lines = [f"### {title}", "", "| dataset | " + " | ".join(methods) + " |",
           "|---|" + "---|" * len(methods)]
  for dataset, row in table.items():
    cells = []
    for m in methods:
      if m not in row:
        cells.append("—")
        continue
      mu, sd = mean_std(row[m])
      n = len(row[m])  # one run has no spread: no "± 0.00" that would read as a measured std
      cells.append(f"{100 * mu:.2f} ± {100 * sd:.2f} (n={n})" if n > 1 else
                   f"{100 * mu:.2f} (n=1)")
    lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(table: dict, path: str, title: str) -> None:
  """One panel per dataset, each with its own y range, so that small gaps stay visible."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  methods, datasets = methods_of(table), list(table)
  colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
  fig, axes = plt.subplots(1, max(len(datasets), 1), squeeze=False,
                           figsize=(max(4.0, 0.55 * len(methods) + 1.5) * max(len(datasets), 1),
                                    4.2))
  for ax, d in zip(axes[0], datasets):
    present = [m for m in methods if m in table[d]]
    stats = [mean_std(table[d][m]) for m in present]
    mus, sds = [100 * s[0] for s in stats], [100 * s[1] for s in stats]
    ax.bar(range(len(present)), mus, yerr=sds, capsize=3,
           color=[colors[m] for m in present])
    for x, (mu, sd) in enumerate(zip(mus, sds)):
      ax.text(x, mu + sd, f"{mu:.1f}", ha="center", va="bottom", fontsize=7)
    if mus:
      lo, hi = min(m - s for m, s in zip(mus, sds)), max(m + s for m, s in zip(mus, sds))
      pad = max(1.0, 0.15 * (hi - lo))
      ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + 1.5 * pad))
    ax.set_xticks(range(len(present)), present, rotation=45, ha="right", fontsize=8)
    ax.set_title(d)
    ax.grid(axis="y", alpha=0.3)
  axes[0][0].set_ylabel("test top-1 (%)")
  fig.suptitle(title)
  fig.tight_layout()
  fileio.save_figure(fig, path, dpi=120)
  plt.close(fig)


def format_commands(runs: list[dict]) -> str:
  """Each run's columns with the config file and `--config.K=V` overrides that made them
  (results.json's `overrides`, and an entry's own `config` where the command that trained it
  used another config file): what a reader needs to make any number of the tables again.
  The datasets of one column share a command; entries written before overrides were recorded
  say so."""
  rows = ["### How each column was made", "", "| run | column | command |", "|---|---|---|"]
  for i, run in enumerate(runs):
    made: dict[str, set[str]] = {}
    for models in run.get("datasets", {}).values():
      for model, entry in models.items():
        if isinstance(entry, dict):
          flags = entry.get("overrides")
          made.setdefault(column(run, model, entry), set()).add(
              "(not recorded)" if flags is None else
              "`" + " ".join([f"--config={entry.get('config', run.get('config', '?'))}",
                              *flags]) + "`")
    for label, commands in made.items():
      rows += [f"| {run_label(run, i)} | {label} | {c} |" for c in sorted(commands)]
  return "\n".join(rows) + "\n"


def write_report(paths: list[str], out: str, pairs: Iterable[tuple[str, str]] = (),
                 runs_out: str | None = None) -> dict[str, str]:
  runs, pairs = load_runs(paths), list(pairs)
  best, last = collect(runs, "best"), collect(runs, "last")
  md = ["# Results", "",
        f"Test top-1 (%), mean ± sample std over runs; {len(runs)} run{'s' * (len(runs) != 1)} "
        "(a seed's workdirs "
        "merged into one run) from " + ", ".join(f"`{p}`" for p in paths) + ".", "",
        format_markdown(best, "Best checkpoint by validation top-1"),
        format_markdown(last, "Last checkpoint"), "![test top-1](results.png)", ""]
  values = per_run(runs)
  columns = methods_of(values)
  for a, b in pairs:
    for name in (a, b):
      if name not in columns:
        raise ValueError(f"--pair {a} {b}: no run has a column {name!r}; columns: "
                         f"{', '.join(columns)}")
  md += [format_per_run(values, "Per run (best checkpoint by validation)"),
         format_per_run(paired_differences(values),
                        "Paired difference to `individual` (same run, so same seed), points",
                        signed=True)]
  comparisons = default_pairs(values, pairs)
  for which, label in (("best", "best checkpoint by validation"), ("last", "last checkpoint")):
    md.append(format_pair_summary(per_run(runs, which=which), comparisons,
                                  f"Paired summary over (dataset, run) pairs, {label}, points"))
  md.append(format_commands(runs))
  fileio.makedirs(out)
  if runs_out:
    write_runs(runs, runs_out)
  files = {"md": fileio.join(out, "results.md"), "png": fileio.join(out, "results.png")}
  fileio.write_atomic(files["md"], "\n".join(md))
  plot(best, files["png"], "test top-1, best-by-validation checkpoint (mean ± std)")
  return files


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workdirs", nargs="+",
                      help="workdirs or results.json files; GROUP=PATH labels a run's methods "
                           "GROUP:method (ablations beside a baseline run)")
  parser.add_argument("--out", required=True, help="directory for results.md and results.png")
  parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"),
                      help="also summarise the paired difference A − B of two columns "
                           "(repeatable), e.g. --pair mlfd kd")
  parser.add_argument("--runs_out", default=None, metavar="DIR",
                      help="also write each run (a seed's workdirs merged) as "
                           "DIR/seedN.results.json")
  args = parser.parse_args(argv)

  def body():
    files = write_report(args.workdirs, args.out, [tuple(p) for p in args.pair], args.runs_out)
    print(fileio.read_text(files["md"]))
    print(f"wrote {files['md']} and {files['png']}")
  return cli.run_tool("mlfd_jax.report", body)


if __name__ == "__main__":
  sys.exit(main())
