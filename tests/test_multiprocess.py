"""Two JAX processes on CPU (gloo collectives), as on a multi-host pod: host-side code that
reads values back from the mesh must give every process the whole, same result."""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

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
    from mlfd_jax.stages import common, probes
    c = digits.get_config("tiny")
    ds = common.build_dataset(c, "digits_a")
    fn = common.model_fn(dict(c.teachers.digits_a), num_classes=ds.num_classes,
                         image_size=ds.image_size, train_cfg=c.teacher_train)
    mesh = parallel.make_mesh()
    v = parallel.replicate(jax.jit(fn.init)(jax.random.key(0)), mesh)
    x, y = probes.pooled_features(fn, v, ds.image_size, ds, "val", 60, mesh, batch_size=32)
    np.savez(sys.argv[5], x=x, y=y, key=probes.probe_key(v, examples=60, steps=1))
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(tmp_path, nproc: int) -> list:
  script = tmp_path / "probe_features.py"
  script.write_text(SCRIPT)
  port, env = str(_free_port()), {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  outs = [tmp_path / f"out_{nproc}_{p}.npz" for p in range(nproc)]
  procs = [subprocess.Popen([sys.executable, str(script), str(p), str(nproc), port, ROOT,
                             str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
           for p, out in enumerate(outs)]
  for p in procs:
    log, _ = p.communicate(timeout=300)
    assert p.returncode == 0, log[-3000:]
  return outs


def test_probe_features_are_whole_and_equal_on_every_process(tmp_path):
  single, = _launch(tmp_path, 1)
  ref = np.load(single)
  assert ref["x"].shape[0] == 60
  for out in _launch(tmp_path, 2):
    got = np.load(out)
    np.testing.assert_allclose(got["x"], ref["x"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["y"], ref["y"])
    assert str(got["key"]) == str(ref["key"])
