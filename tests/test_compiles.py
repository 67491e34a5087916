"""A stage compiles its train step and its evaluation once, and nothing at all after its first
steps: a retrace per step (a Python scalar, a changing shape) would cost a compile per step."""

import collections
import os
import pathlib
import subprocess
import sys

import jax
from jax import monitoring

from mlfd_jax import parallel, train
from mlfd_jax.stages import teachers
from mlfd_jax.stages.context import RunContext

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class _CountingWriter:
  """A metrics writer that notes, at every step it is called for, how many compiles so far."""

  def __init__(self, compiles):
    self.compiles, self.seen = compiles, {}

  def write_scalars(self, step, scalars):
    del scalars
    self.seen[step] = sum(self.compiles.values())

  def flush(self):
    pass


def test_nothing_compiles_after_the_first_steps(digits_config, tmp_path):
  ctx = RunContext(digits_config, str(tmp_path))
  ds, task = ctx.dataset("digits_a"), teachers.teacher_task(ctx, "digits_a")
  cfg = digits_config.teacher_train
  cfg.steps, cfg.eval_every, cfg.log_every = 8, 2, 1  # 4 validations and saves, 8 log lines
  compiles = collections.Counter()

  def listen(event, duration, **kwargs):
    del duration
    if event == COMPILE_EVENT:
      compiles[kwargs.get("fun_name", "")] += 1

  writer = _CountingWriter(compiles)
  monitoring.register_event_duration_secs_listener(listen)
  try:
    ckpts, _ = train.fit(task, ds, [train.EvalSet("digits_a", ds)], cfg, str(tmp_path / "t"),
                         mesh=parallel.make_mesh(jax.device_count()), seed=0, writer=writer)
  finally:
    monitoring.unregister_event_duration_listener(listen)
  assert ckpts.latest_step() == 8
  ckpts.close()
  assert compiles["jit(_train_step)"] == 1, compiles
  assert compiles["jit(_eval_step)"] == 1, compiles
  # After the first validation and save (step 2), steps 3..8 with their logs, validations and
  # saves compile nothing.
  assert writer.seen[3] == writer.seen[8], (writer.seen, compiles)


def test_a_workdirs_cache_keeps_even_the_programs_that_compile_fast(tmp_path):
  """A resumed run compiles nothing again: every program goes to DIR/jax_cache, not only
  those over jax's 1 s default."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
  code = ("import sys, jax; from mlfd_jax import workdir; "
          "workdir.use_compilation_cache(sys.argv[1]); jax.jit(lambda x: x * 2 + 1)(1.0)")
  r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert (tmp_path / "jax_cache").is_dir() and any((tmp_path / "jax_cache").iterdir())
