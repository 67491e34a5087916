"""The import rules of docs/design.md, checked on the source: each would fail on the import
that breaks it."""

import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parents[1] / "mlfd_jax"
# The compute core: runs on a bare jax/flax/optax/orbax install and knows nothing of configs,
# workdirs or stages.
CORE = ("models", "modelfn", "joint_teacher", "functional", "distill", "train", "evaluation",
        "parallel", "checkpoint", "optim", "metrics", "registry", "fileio")
PIPELINE = ("stages", "main", "report", "curves", "results", "config_lib")


def _module(path: pathlib.Path) -> str:
  parts = path.relative_to(PKG.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
  """Every mlfd_jax module `path` imports, at top level or inside a function."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.startswith("mlfd_jax")}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlfd_jax"):
      out |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
  return out


def _stage_modules() -> set[str]:
  """Modules of stages/ that define a stage (a top-level `STAGE = ...`)."""
  found = set()
  for path in (PKG / "stages").glob("*.py"):
    for node in ast.parse(path.read_text()).body:
      if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "STAGE"
                                              for t in node.targets):
        found.add(f"mlfd_jax.stages.{path.stem}")
  return found


def test_no_stage_module_imports_another():
  stages = _stage_modules()
  assert {"mlfd_jax.stages.teachers", "mlfd_jax.stages.students"} <= stages
  bad = [(s, i) for s in sorted(stages)
         for i in _imports(PKG / "stages" / f"{s.rsplit('.', 1)[1]}.py")
         if i in stages and i != s]
  assert not bad, bad


def test_the_core_imports_nothing_of_the_pipeline():
  bad = []
  for path in PKG.rglob("*.py"):
    mod = _module(path)
    if mod.split(".")[1:2] and mod.split(".")[1] in CORE:
      bad += [(mod, i) for i in _imports(path) if i.split(".")[1:2] and i.split(".")[1] in PIPELINE]
  assert not bad, bad
