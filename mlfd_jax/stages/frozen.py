"""Restoring the finished models a later stage stands on, each once per command.

`restore(spec)` is the one way a frozen model comes back: from its `ModelSpec` (specs.py), never
from the producing stage's task. A model that is missing, unfinished or made with another config
fails in one line that names the directory, what is wrong, and the command that makes it right.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlfd_jax import checkpoint, fileio, parallel, train
from mlfd_jax.stages import probes, specs

if TYPE_CHECKING:
  from mlfd_jax.stages.context import RunContext


def open_checkpoints(directory: str) -> checkpoint.Checkpoints | None:
  """A read-only manager of `directory`, or None if no process sees it."""
  if not parallel.agree(fileio.isdir(directory)):
    return None
  return checkpoint.Checkpoints(directory, read_only=True)


class FrozenModels:
  """The run context's cache of restored models: teachers, joint teachers, probes, students."""

  def __init__(self, ctx: RunContext):
    self.ctx = ctx
    self._restored: dict[str, Any] = {}
    self._teachers: list | None = None
    self._probes: dict[int, list] = {}
    self._digests: dict[int, str] = {}

  def restore(self, spec: specs.ModelSpec) -> Any:
    """The best-by-validation variables of the finished model `spec` describes."""
    if spec.directory in self._restored:
      return self._restored[spec.directory]
    directory, make = self.ctx.path(spec.directory), self.ctx.command(spec.stage)
    ckpts = open_checkpoints(directory)
    if ckpts is None:
      raise FileNotFoundError(f"no {spec.what} checkpoint in {directory}; make it with: {make}")
    try:
      latest = ckpts.latest_step()
      if latest is None:
        raise FileNotFoundError(f"no {spec.what} checkpoint in {directory}; make it with: {make}")
      bad = checkpoint.meta_mismatch(ckpts.read_config(), spec.meta)
      if bad:
        raise ValueError(f"{spec.what} checkpoint in {directory} was made with {bad[0]}="
                         f"{bad[1]!r} but the config asks for {bad[2]!r}; retrain it with: "
                         f"{make} (after moving {directory} away)")
      if not ckpts.is_finished(spec.total_steps):
        raise ValueError(f"{spec.what} in {directory} is unfinished (step {latest}/"
                         f"{spec.total_steps}); finish it with: {make}")
      variables = ckpts.restore_model(ckpts.best_step() or latest,
                                      train.abstract_variables(spec.init, self.ctx.mesh))
    finally:
      ckpts.close()
    self._restored[spec.directory] = variables
    return variables

  def put(self, spec: specs.ModelSpec, variables: Any) -> None:
    """Serves `variables` as `spec`'s model instead of its checkpoint (a model held in memory:
    a notebook, a test)."""
    self._restored[spec.directory] = variables

  def teachers(self) -> list:
    """Every dataset's finished stage-1 teacher, in dataset order (specs built and checkpoints
    restored once; every frozen input that needs the teachers calls this)."""
    if self._teachers is None:
      self._teachers = [self.restore(specs.teacher(self.ctx, n)) for n in self.ctx.names]
    return self._teachers

  def probes_for(self, index: int, models) -> list:
    """Per teacher: None where it shares dataset `index`'s label space, else its linear probe
    on that dataset (loaded, or fitted once per workdir). `models`: each teacher's
    (ModelFn, input size)."""
    if index in self._probes:
      return self._probes[index]
    ctx, target = self.ctx, self.ctx.names[index]
    dc, teacher_vars = ctx.config.distill, self.teachers()
    out = []
    for k, ((fn, size), name) in enumerate(zip(models, ctx.names)):
      if probes.same_data(ctx.config, target, name):
        out.append(None)
        continue
      if k not in self._digests:
        self._digests[k] = probes.variables_digest(teacher_vars[k])
      out.append(probes.load_or_fit(
          ctx.workdir, target, name, fn, teacher_vars[k], size, ctx.dataset(target), ctx.mesh,
          examples=int(dc.get("probe_examples", 10000)), steps=int(dc.get("probe_steps", 300)),
          teacher_digest=self._digests[k]))
    self._probes[index] = out
    return out
