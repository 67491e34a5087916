"""How the stage layer reads, measured: the numbers issue 11 asks for before and after a redesign.

  python tools/code_metrics.py WORKDIR_OF_A_FINISHED_DEMO   (configs/digits.py:tiny is enough)

Prints (1) the functions of mlfd_jax/ with more than 6 parameters, (2) the file crossings made
while `config` is followed through `stage=eval` from main.run to results.json (see
`follow_config`), (3) dataset builds during
`stage=all` on a fresh copy of the workdir's finished stages, (4) imports between stage modules.
"""

from __future__ import annotations

import argparse
import ast
import os
import pathlib
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PKG = ROOT / "mlfd_jax"


def many_params(limit: int = 6):
  out = []
  for path in sorted(PKG.rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        a = node.args
        n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) - (a.args[:1] and a.args[0].arg
                                                                     in ("self", "cls") and 1 or 0)
        if n > limit:
          out.append((n, f"{path.relative_to(ROOT)}:{node.name}"))
  return sorted(out, reverse=True)


def stage_imports():
  """Imports of one stage module (a module of stages/ that defines `STAGE`) by another."""
  out = []
  stages = PKG / "stages"
  names = {p.stem for p in stages.glob("*.py")
           if any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "STAGE"
                                                   for t in n.targets)
                  for n in ast.parse(p.read_text()).body)}
  for path in sorted(stages.glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module == "mlfd_jax.stages":
        if path.stem in names:
          out += [f"{path.name} -> {a.name}" for a in node.names if a.name in names]
      elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlfd_jax.stages."):
        mod = node.module.rsplit(".", 1)[1]
        if path.stem in names and mod in names:
          out.append(f"{path.name} -> {mod}")
  return out


def _holds(value, config) -> bool:
  """`value` is the config, or an object (a run context) that carries it as an attribute."""
  if value is config:
    return True
  try:
    return any(v is config for v in vars(value).values())
  except TypeError:
    return False


def follow_config(config, workdir: str):
  """Runs `workdir` through `main.run(config)` and follows the config (or the object that
  carries it) through every call into mlfd_jax/ that receives it.

  Returns (calls, unique edges, crossings, climbs): every such call; the distinct
  caller -> callee function pairs between them; those pairs whose two functions are in
  different files (a reader following the config changes files); and the crossings into a file
  that is already on the call chain (the reader climbs back into a file they came from).
  """
  from mlfd_jax import main
  calls, edges, chains = [], set(), {}

  def profile(frame, event, arg):
    if event == "return":
      chains.pop(id(frame), None)  # frame ids are reused once a frame is gone
      return
    if event != "call" or str(PKG) not in frame.f_code.co_filename:
      return
    if not any(_holds(v, config) for v in frame.f_locals.values()):
      return
    here = (os.path.relpath(frame.f_code.co_filename, ROOT), frame.f_code.co_name)
    parent = frame.f_back
    while parent is not None and id(parent) not in chains:
      parent = parent.f_back
    chain = chains.get(id(parent), ()) if parent is not None else ()
    if chain:
      edges.add((chain[-1], here, here[0] in {f for f, _ in chain[:-1]} | {chain[-1][0]}
                 and here[0] != chain[-1][0]))
    chains[id(frame)] = (*chain, here)
    calls.append(here)

  sys.setprofile(profile)
  try:
    main.run(config, workdir)
  finally:
    sys.setprofile(None)
  crossings = [(a, b) for a, b, _ in edges if a[0] != b[0]]
  climbs = [(a, b) for a, b, back in edges if back]
  return calls, edges, crossings, climbs


def count_builds(config, workdir: str) -> int:
  from mlfd_jax import main
  from mlfd_jax.data import base
  count = [0]
  for name, factory in list(base.DATASETS._items.items()):
    def counted(cfg, factory=factory):
      count[0] += 1
      return factory(cfg)
    base.DATASETS._items[name] = counted
  main.run(config, workdir)
  return count[0]


def main_(workdir: str) -> None:
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  from configs import digits
  for n, name in many_params():
    print(f"params {n:2d}  {name}")
  print("stage->stage imports:", stage_imports() or "none")
  tmp = tempfile.mkdtemp()
  shutil.copytree(workdir, tmp, dirs_exist_ok=True)
  c = digits.get_config("tiny")
  c.stage = "eval"
  calls, edges, crossings, climbs = follow_config(c, tmp)
  print(f"config followed through stage=eval: {len(calls)} calls that receive it, "
        f"{len(edges)} distinct caller->callee pairs, {len(crossings)} of them cross files, "
        f"{len(climbs)} climb back into a file already on the call chain")
  for a, b in sorted(crossings):
    print(f"  crossing {a[0]}:{a[1]} -> {b[0]}:{b[1]}")
  c = digits.get_config("tiny")
  c.stage = "all"
  print(f"dataset builds in stage=all: {count_builds(c, tmp)}")
  shutil.rmtree(tmp)


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdir", help="the workdir of a finished demo run "
                      "(python -m mlfd_jax.main --config=configs/digits.py:tiny --workdir=...)")
  args = parser.parse_args()
  if not os.path.isdir(args.workdir):
    parser.error(f"no workdir at {args.workdir}")
  main_(args.workdir)
