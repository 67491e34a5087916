"""Two JAX processes on CPU (gloo collectives), as on a multi-host pod: each feeds its own rows
of every batch, and training and the host-side code that reads values back from the mesh must
give the same results as one process."""

import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import os, sys
    pid, nproc, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={4 // nproc}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    if nproc > 1:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize(f"localhost:{port}", nproc, pid)
    sys.path.insert(0, sys.argv[4])
    import numpy as np
    from configs import digits
    from mlfd_jax import parallel
    from mlfd_jax.stages import probes, specs
    from mlfd_jax.stages.context import RunContext
    c = digits.get_config("tiny")
    ctx = RunContext(c, "")
    ds = ctx.dataset("digits_a")
    fn = specs.model_fn(ctx, dict(c.teachers.digits_a), ds, c.teacher_train)
    mesh = parallel.make_mesh()
    v = jax.jit(fn.init)(jax.random.key(0))
    # Line the processes up before their first collective: gloo gives up on a process more
    # than 30 s late, and on a busy host one process can fall that far behind while compiling.
    parallel.barrier("variables made")
    v = jax.device_put(v, parallel.replicated(mesh))
    x, y = probes.pooled_features(fn, v, ds.image_size, ds, "val", 60, mesh, batch_size=32)

    # Three teacher steps, each process feeding its rows of every global batch (no crops and a
    # small lr, as in test_train's device-count test).
    import dataclasses
    from mlfd_jax import train
    from mlfd_jax.stages import teachers
    cfg = c.teacher_train
    cfg.batch_size, cfg.optimizer.lr = 16, 0.01
    task = dataclasses.replace(teachers.teacher_task(ctx, "digits_a"), pad=0)
    trainer = train.Trainer(task, cfg, mesh, total_steps=3)
    model, state = trainer.init(jax.random.key(0))
    parallel.barrier("trainer made")
    key = parallel.replicated_key(1, mesh)
    batches = ds.train_batches(16, seed=0, process_index=jax.process_index(),
                               process_count=jax.process_count())
    losses = []
    for _ in range(3):
      model, state, m = trainer.step(model, state, parallel.to_global(next(batches), mesh), key)
      losses.append(float(m["loss"].addressable_data(0)))
    params = [np.asarray(p.addressable_data(0)) for p in jax.tree.leaves(model["params"])]
    ev = trainer.evaluator.evaluate(model, train.EvalSet("digits_a", ds), "val")

    # The teachers stage end to end: fit (checkpoints, validation, resume files), results.json.
    from mlfd_jax import main as mlfd_main
    c.stage = "teachers"
    for other in ("digits_b", "digits_c"):  # one teacher is enough, and compiles once
      del c.datasets[other]
    mlfd_main.run(c, sys.argv[6], "configs/digits.py:tiny")
    np.savez(sys.argv[5], x=x, y=y, key=probes.variables_digest(v),
             losses=np.asarray(losses), eval=np.asarray([ev["top1"], ev["count"]]),
             **{f"p{i}": p for i, p in enumerate(params)})
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(tmp_path, nproc: int) -> list:
  """Runs SCRIPT on `nproc` processes; the first that fails stops the others (which would
  otherwise wait for it at their next collective) and the assertion shows every log."""
  script = tmp_path / "probe_features.py"
  script.write_text(SCRIPT)
  port, env = str(_free_port()), {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  outs = [tmp_path / f"out_{nproc}_{p}.npz" for p in range(nproc)]
  logs = [tmp_path / f"log_{nproc}_{p}.txt" for p in range(nproc)]
  workdir = tmp_path / f"workdir_{nproc}"
  procs = []
  for p, (out, log) in enumerate(zip(outs, logs)):
    with open(log, "w") as f:
      procs.append(subprocess.Popen([sys.executable, str(script), str(p), str(nproc), port,
                                     ROOT, str(out), str(workdir)], env=env, stdout=f,
                                    stderr=subprocess.STDOUT))
  deadline = time.time() + 900
  while time.time() < deadline and any(p.poll() is None for p in procs):
    if any(p.poll() not in (None, 0) for p in procs):
      time.sleep(10)  # the others may fail on their own, with their own message
      break
    time.sleep(0.2)
  for p in procs:
    if p.poll() is None:
      p.kill()
    p.wait()
  assert all(p.returncode == 0 for p in procs), "\n".join(
      f"--- process {i} (exit {p.returncode}):\n{log.read_text()[-3000:]}"
      for i, (p, log) in enumerate(zip(procs, logs)))
  return outs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(one process x 4 devices, [each of two processes x 2 devices]) outputs of SCRIPT."""
  tmp_path = tmp_path_factory.mktemp("multiprocess")
  single, = _launch(tmp_path, 1)
  return np.load(single), [np.load(out) for out in _launch(tmp_path, 2)], tmp_path


def test_probe_features_are_whole_and_equal_on_every_process(runs):
  ref, procs, _ = runs
  assert ref["x"].shape[0] == 60
  for got in procs:
    np.testing.assert_allclose(got["x"], ref["x"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["y"], ref["y"])
    assert str(got["key"]) == str(ref["key"])


def test_two_processes_train_the_same_parameters_as_one(runs):
  ref, procs, _ = runs
  assert ref["losses"][-1] != ref["losses"][0]  # it trained
  leaves = [k for k in ref.files if k.startswith("p")]
  assert len(leaves) > 10
  for got in procs:
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-4)
    for k in leaves:
      np.testing.assert_allclose(got[k], ref[k], rtol=2e-4, atol=2e-5)
    # Evaluation counts every validation example once, whichever process fed it.
    np.testing.assert_array_equal(got["eval"], ref["eval"])
  assert ref["eval"][1] == 87


def test_the_teachers_stage_runs_on_two_processes(runs):
  import json
  *_, tmp_path = runs
  res = {n: json.loads((tmp_path / n / "results.json").read_text())["datasets"]
         for n in ("workdir_1", "workdir_2")}
  assert sorted(res["workdir_2"]) == ["digits_a"]
  for name, entry in res["workdir_1"].items():
    one, two = entry["teacher"], res["workdir_2"][name]["teacher"]
    assert one["step"] == two["step"] > 0
    # The same model up to reduction order: at most one test image (of 140) apart.
    assert abs(one["test_top1"] - two["test_top1"]) <= 1 / 140 + 1e-9



def _slurm_job_id() -> int:
  """A SLURM job id whose coordinator port (JAX derives it from the id) is free here."""
  import random
  low = 65535 - 2**12 + 1  # JAX's ports for SLURM jobs: low + id % 4096
  for _ in range(100):
    port = random.randrange(low, 65536)
    with socket.socket() as s:
      try:
        s.bind(("localhost", port))
      except OSError:
        continue
    return port - low
  raise RuntimeError("no free port in JAX's SLURM range")


def test_sigterm_to_one_of_two_slurm_processes_stops_both_at_one_saved_step(tmp_path):
  """The real command line on two processes that find each other through SLURM's environment
  (as launch/slurm_gpu.sh starts them): SIGTERM to process 1 alone makes both save the same
  step and stop; rerunning both resumes there and finishes. One teacher is enough (the other
  two cost more than the rest of the test), with steps to spare after its first save."""
  import json
  import re
  import signal
  job = str(_slurm_job_id())
  workdir = tmp_path / "w"
  args = [sys.executable, "-m", "mlfd_jax.main", "--config=configs/digits.py:tiny",
          f"--workdir={workdir}", "--distributed", "--config.stage=teachers",
          "--config.teacher_datasets=digits_a",
          "--config.teacher_train.steps=80", "--config.teacher_train.batch_size=16",
          "--config.teacher_train.eval_every=20", "--config.teacher_train.log_every=5"]

  def start():
    procs = []
    for p in range(2):
      env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
             "SLURM_JOB_ID": job, "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
             "SLURM_PROCID": str(p), "SLURM_LOCALID": str(p),
             "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
             "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
      procs.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True))
    return procs

  # On several processes a signal is acted on at multiples of log_every that are not validation
  # steps (all processes agree there): 25, 35, ..., 75 here, after the first save at 20.
  procs = start()
  ckdir = workdir / "teachers" / "digits_a"
  deadline = time.time() + 300
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if ckdir.is_dir() and any(p.name.isdigit() for p in ckdir.iterdir()):
      break
    time.sleep(0.05)
  assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=180) for p in procs]
  assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, [e[-2000:] for _, e in outs]
  stops = [re.fullmatch(r"mlfd_jax: stopped by SIGTERM at step (\d+)/80 of teacher/(digits_a): "
                        r"its state is saved; rerun the same command to continue\n", e)
           for _, e in outs]
  assert all(stops), [e[-2000:] for _, e in outs]
  step, name = stops[0].groups()
  assert stops[1].groups() == (step, name) and 20 < int(step) < 80
  assert (workdir / "teachers" / name / step).is_dir()

  procs = start()
  outs = [p.communicate(timeout=600) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
  assert all(f"[teacher/{name}] resuming at step {step}/80" in o for o, _ in outs)
  res = json.loads((workdir / "results.json").read_text())["datasets"]
  assert sorted(res) == ["digits_a"] and res["digits_a"]["teacher"]["last"]["step"] == 80
