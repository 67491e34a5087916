r"""One seed of a config, end to end and timed: where a study's wall time goes.

  python -m benchmarks.end_to_end configs/shared_trio.py runs/e2e/today \
      --methods kd,mlfd_last --baseline_joint --json benchmarks/results/e2e_today.json
  python -m benchmarks.end_to_end configs/shared_trio.py runs/e2e/fast ... --config.K=V
  python -m benchmarks.end_to_end --compare benchmarks/results/e2e_{today,fast}.json

Runs, in a fresh workdir, the commands `launch/seeds.sh` runs for one seed (stage=all; then
`--baseline_joint`; then each of `--methods` as extra students), each as its own process with
its log in WORKDIR/end_to_end/. Each command's wall time is split into the models it trained
(steps, validation and checkpoints: train.py's per-model summary line) and the rest (start-up,
data loading, building, precomputation, the final evaluation). Test top-1 of every model comes
from the workdir's results.json, so `--compare` puts two variants' speed and accuracy side by
side. A step timer (benchmarks/throughput.py) cannot see the rest; this can.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import time

from benchmarks import timing
from mlfd_jax import cli, report

SUMMARY = re.compile(r"\[(?P<model>[^\]]+)\] trained steps (?P<start>\d+)-(?P<end>\d+) in "
                     r"(?P<total>\S+): steps (?P<steps>\S+) \((?P<rate>\d+) img/s\), validation "
                     r"(?P<validation>\S+), checkpoints (?P<checkpoints>\S+)$")


def seconds(text: str) -> float:
  """`1h02m03s`, `2m05s`, `7s` or `0.4s` (train.py's formats) in seconds."""
  m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?([\d.]+)s", text)
  if not m:
    raise ValueError(f"not a duration: {text!r}")
  h, mins, s = m.groups()
  return 3600 * int(h or 0) + 60 * int(mins or 0) + float(s)


def trained_models(log: str) -> list[dict]:
  """Every per-model summary line of a log, as numbers."""
  models = []
  for line in log.splitlines():
    m = SUMMARY.search(line)
    if m:
      models.append({"model": m["model"], "steps": int(m["end"]) - int(m["start"]),
                     "total_s": seconds(m["total"]), "steps_s": seconds(m["steps"]),
                     "img_per_s": float(m["rate"]), "validation_s": seconds(m["validation"]),
                     "checkpoints_s": seconds(m["checkpoints"])})
  return models


def commands(config: str, workdir: str, methods: list[str], baseline_joint: bool,
             overrides: list[str]) -> list[tuple[str, list[str]]]:
  """(name, argv) of one seed's commands, in launch/seeds.sh's order."""
  main = [sys.executable, "-m", "mlfd_jax.main", f"--config={config}", f"--workdir={workdir}"]
  out = [("all", main + overrides)]
  if baseline_joint:
    out.append(("baseline_joint", main + ["--config.stage=baseline_joint"] + overrides))
  out += [(f"students:{m}", main + ["--config.stage=students", f"--config.distill.method={m}"]
           + overrides) for m in methods]
  return out


def _reason(log: str) -> str:
  """` (<the run's one-line error>)` from a failed run's log, or "" if it has none."""
  with open(log) as f:
    errors = [line.strip() for line in f if line.startswith(cli.ERROR_PREFIX)]
  return f" ({errors[-1][len(cli.ERROR_PREFIX):]})" if errors else ""


def run(args, overrides: list[str]) -> dict:
  if os.path.exists(args.workdir) and os.listdir(args.workdir):
    raise SystemExit(f"end_to_end: {args.workdir} is not empty; a resumed or skipped stage "
                     f"would not be timed, so give a new workdir")
  logs = os.path.join(args.workdir, "end_to_end")
  os.makedirs(logs)
  methods = [m for m in args.methods.split(",") if m]
  launches = []
  for i, (name, argv) in enumerate(commands(args.config, args.workdir, methods,
                                            args.baseline_joint, overrides)):
    path = os.path.join(logs, f"{i}_{name.replace(':', '_')}.log")
    print(f"[{name}] {' '.join(argv[1:])}  (log: {path})", flush=True)
    t = time.perf_counter()
    with open(path, "w") as f:
      proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t
    if proc.returncode:
      raise SystemExit(f"end_to_end: [{name}] exited with {proc.returncode}{_reason(path)}; "
                       f"see {path}")
    with open(path) as f:
      models = trained_models(f.read())
    trained = sum(m["total_s"] for m in models)
    launches.append({"name": name, "argv": argv[1:], "wall_s": wall, "models": models,
                     "outside_models_s": wall - trained})
    print(f"[{name}] {wall:.1f} s, {trained:.1f} s of it training {len(models)} models",
          flush=True)
  runs = report.load_runs([args.workdir])
  return {"config": args.config, "overrides": overrides, "methods": methods,
          "baseline_joint": args.baseline_joint, "cpu": timing.cpu_description(),
          "cores": len(os.sched_getaffinity(0)), "wall_s": sum(x["wall_s"] for x in launches),
          "launches": launches, "test_top1": report.collect(runs)}


def _kind(model: str) -> str:
  """`teacher/mnist` -> `teacher`; `students_kd/mnist` -> `students_kd`."""
  return model.split("/")[0]


def split(result: dict) -> dict[str, float]:
  """Seconds by kind of work: each model kind's steps, then validation, checkpoints, and what
  no model's training holds."""
  out: dict[str, float] = {}
  for launch in result["launches"]:
    for m in launch["models"]:
      key = f"steps: {_kind(m['model'])}"
      out[key] = out.get(key, 0.0) + m["steps_s"]
      out["validation"] = out.get("validation", 0.0) + m["validation_s"]
      out["checkpoints"] = out.get("checkpoints", 0.0) + m["checkpoints_s"]
    out["outside training"] = out.get("outside training", 0.0) + launch["outside_models_s"]
  out["total"] = result["wall_s"]
  return out


def format_one(result: dict) -> str:
  rows = ["| part | seconds | share |", "|---|---|---|"]
  parts = split(result)
  rows += [f"| {k} | {v:.1f} | {100 * v / parts['total']:.0f}% |" for k, v in parts.items()]
  return "\n".join(rows)


def format_compare(a: dict, b: dict, names: tuple[str, str]) -> str:
  """Wall time by part and test top-1 by (dataset, method), `a` beside `b`."""
  pa, pb = split(a), split(b)
  rows = [f"| part | {names[0]} s | {names[1]} s | speed-up |", "|---|---|---|---|"]
  for k in [*pa, *[k for k in pb if k not in pa]]:
    x, y = pa.get(k, 0.0), pb.get(k, 0.0)
    rows.append(f"| {k} | {x:.1f} | {y:.1f} | {x / y:.2f}x |" if y else
                f"| {k} | {x:.1f} | {y:.1f} | — |")
  rows += ["", f"| dataset | method | {names[0]} top-1 | {names[1]} top-1 | difference |",
           "|---|---|---|---|---|"]
  for dataset, methods in sorted(a["test_top1"].items()):
    for method, (x, *_) in sorted(methods.items()):
      y = b["test_top1"].get(dataset, {}).get(method, [None])[0]
      rows.append(f"| {dataset} | {method} | {100 * x:.2f} | "
                  + ("— | — |" if y is None else f"{100 * y:.2f} | {100 * (y - x):+.2f} |"))
  return "\n".join(rows)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("config", nargs="?", help="config path, as for mlfd_jax.main")
  parser.add_argument("workdir", nargs="?", help="a new, empty workdir")
  parser.add_argument("--methods", default="", help="extra student methods, comma-separated")
  parser.add_argument("--baseline_joint", action="store_true")
  parser.add_argument("--json", help="write the result here")
  parser.add_argument("--compare", nargs=2, metavar="JSON", help="two results to set side by side")
  args, overrides = parser.parse_known_args(argv)
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    parser.error(f"unknown argument {bad[0]}; only --config.K=V overrides pass through")
  if args.compare:
    a, b = (json.loads(pathlib.Path(p).read_text()) for p in args.compare)
    names = tuple(os.path.splitext(os.path.basename(p))[0] for p in args.compare)
    print(format_compare(a, b, names))
    return 0
  if not (args.config and args.workdir):
    parser.error("give CONFIG and WORKDIR, or --compare A.json B.json")
  result = run(args, overrides)
  print(format_one(result))
  if args.json:
    timing.write_json(args.json, result)
  return 0


if __name__ == "__main__":
  sys.exit(main())
