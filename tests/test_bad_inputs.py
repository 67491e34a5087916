"""The README's bad-input catalogue, row by row, through the real command line.

Every case runs `python -m mlfd_jax.main` on a workdir that already holds a finished teachers
stage and checks the whole of stderr (one `mlfd_jax: error:` line naming the bad key, value or
file and what is valid), exit code 2, and that no file already in the workdir changed or went
missing. The command-line entry errors (flags, config files, keys, types) are in test_cli.py.
"""

import hashlib
import os
import pathlib
import re
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRACE = " (MLFD_TRACEBACK=1 shows where)"
DIGITS = "--config=configs/digits.py:tiny"
TIN = "--config=configs/tiny_imagenet_subsets.py:tiny"
NPZ = "tiny_imagenet30_32.npz"


def _digests(root: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


def _fail(workdir: pathlib.Path, *args: str, preexec_fn=None, env_extra=None) -> str:
  """Runs the command on `workdir`; asserts exit code 2 and every file already there intact;
  returns stderr."""
  before = _digests(workdir) if workdir.is_dir() else {}
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         **(env_extra or {})}
  env.pop("MLFD_TRACEBACK", None)
  r = subprocess.run([sys.executable, "-m", "mlfd_jax.main", *args, f"--workdir={workdir}"],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                     preexec_fn=preexec_fn)
  assert r.returncode == 2, r.stderr[-3000:]
  after = _digests(workdir) if workdir.is_dir() else {}
  changed = [p for p, h in before.items() if after.get(p) != h]
  assert not changed, f"changed or removed: {changed}"
  return r.stderr


@pytest.fixture(scope="module")
def finished_teachers(tmp_path_factory):
  """A workdir with the tiny demo's teachers stage done (copied by each test)."""
  workdir = tmp_path_factory.mktemp("teachers")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  r = subprocess.run([sys.executable, "-m", "mlfd_jax.main", DIGITS, f"--workdir={workdir}",
                      "--config.stage=teachers"], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return workdir


@pytest.fixture
def workdir(finished_teachers, tmp_path):
  w = tmp_path / "w"
  shutil.copytree(finished_teachers, w)
  return w


CONFIG_VALUES = [
    (["--config.teacher_train.steps=0"],
     "teacher_train needs steps > 0 or epochs > 0; got steps=0, epochs=0"),
    (["--config.joint_train.steps=-5"],
     "joint_train needs steps > 0 or epochs > 0; got steps=-5, epochs=0"),
    (["--config.teacher_train.batch_size=0"],
     "teacher_train.batch_size=0: a batch needs at least one example per device; use a positive "
     "multiple of the 2 devices of the mesh"),
    # a later stage's block fails before the teachers stage trains anything
    (["--config.student_train.batch_size=15"],
     "student_train.batch_size=15 is not divisible by the 2 devices of the mesh; use a positive "
     "multiple of 2"),
    (["--config.students.digits_c.name=resnet19"],
     "unknown model 'resnet19'; valid: convnext_atto, convnext_tiny, resnet18, resnet34, "
     "resnet50, vit_s, vit_ti"),
    (["--config.datasets.digits_b.source=mnsit"],
     "unknown dataset source 'mnsit'; valid: folder, npz, sklearn_digits, tfds"),
    (["--config.joint_train.optimizer.name=adam"],
     "joint_train: unknown optimizer 'adam'; valid: adamw, sgd"),
    (["--config.student_train.schedule.name=linear"],
     "student_train: unknown schedule 'linear'; valid: constant, cosine, onecycle"),
    (["--config.student_train.dtype=fp16"], "unknown dtype 'fp16'; valid: float32, bfloat16"),
    (["--config.distill.method=nope"], "unknown distillation method 'nope'; valid: amtml, avg_kd, "
     "feed, feed_seq, kd, mlfd, mlfd_last"),
    (["--config.joint.fusion_level=stage7"], None),  # message checked below
    (["--config.teacher_datasets=digits_b"],
     "teacher_datasets selects the teachers of stage=teachers only; stage=all would ignore it: "
     "leave teacher_datasets empty"),
    # before, the joint teacher trained from every teacher as if the key were not there
    (["--config.stage=joint", "--config.teacher_datasets=digits_b"],
     "teacher_datasets selects the teachers of stage=teachers only; stage=joint would ignore "
     "it: leave teacher_datasets empty"),
    (["--config.stage=teachers", "--config.teacher_datasets=digits_b,digit_c"],
     "teacher_datasets has 'digit_c', which is not a configured dataset; valid: digits_a, "
     "digits_b, digits_c"),
]


@pytest.mark.parametrize("args,error", CONFIG_VALUES, ids=[a[0][0] for a in CONFIG_VALUES])
def test_bad_config_value_fails_before_any_training(workdir, args, error):
  stderr = _fail(workdir, DIGITS, *args)
  if error is None:
    assert stderr.startswith("mlfd_jax: error: ") and "stage7" in stderr, stderr
    assert stderr.count("\n") == 1, stderr
  else:
    assert stderr == f"mlfd_jax: error: {error}{TRACE}\n"
  assert not (workdir / "joint").exists() and not (workdir / "students").exists()


def test_check_stage_names_a_bad_method_and_trains_nothing(tmp_path):
  """`stage=check` fails on a later stage's bad value like `all` does, and on a good config
  exits 0 having written no model."""
  workdir = tmp_path / "w"
  stderr = _fail(workdir, DIGITS, "--config.stage=check", "--config.distill.method=nope")
  assert stderr == ("mlfd_jax: error: unknown distillation method 'nope'; valid: amtml, avg_kd, "
                    f"feed, feed_seq, kd, mlfd, mlfd_last{TRACE}\n")
  r = subprocess.run([sys.executable, "-m", "mlfd_jax.main", DIGITS, f"--workdir={workdir}",
                      "--config.stage=check", "--config.distill.method=kd"],
                     cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "config checked" in r.stdout
  assert "datasets: digits_a,digits_b,digits_c" in r.stdout.splitlines()  # for launch/seed_lanes.sh
  assert [p.name for p in workdir.iterdir()] == []  # nothing trained, nothing recorded


def test_a_tfds_dataset_never_prepared_is_named_by_the_check(tmp_path):
  """The README's ImageNet command on a machine whose TFDS data_dir lacks the data: one line
  that names the dataset, the directory searched and how to prepare it, before anything trains."""
  workdir, data_dir = tmp_path / "w", tmp_path / "tfds"
  data_dir.mkdir()
  stderr = _fail(workdir, "--config=configs/imagenet_subsets.py", f"--config.data_dir={data_dir}",
                 "--config.stage=check")
  assert stderr == (f"mlfd_jax: error: dataset 'in3_0': TFDS 'imagenet2012' has no prepared data "
                    f"in {data_dir}; prepare it there (`tfds build imagenet2012 "
                    f"--data_dir={data_dir}`) or point data_dir (or TFDS_DATA_DIR) at where it "
                    f"is{TRACE}\n")
  assert [p.name for p in workdir.iterdir()] == []


def _npz(path: pathlib.Path, **arrays) -> pathlib.Path:
  """A `tiny_imagenet30_32.npz` under `path` with 10 images of each of the 30 classes, the given
  arrays replaced (None drops one)."""
  path.mkdir(parents=True)
  x, y = np.zeros((300, 8, 8, 3), np.uint8), np.arange(300) % 30
  arrs = {"x_train": x, "y_train": y, "x_test": x, "y_test": y, **arrays}
  np.savez(path / NPZ, **{k: v for k, v in arrs.items() if v is not None})
  return path


def test_bad_npz_files_name_the_file_and_what_is_wrong(workdir, tmp_path):
  """One command per bad file; the workdir's teachers are never touched."""
  good = _npz(tmp_path / "good")
  truncated = tmp_path / "truncated"
  truncated.mkdir()
  (truncated / NPZ).write_bytes((good / NPZ).read_bytes()[:3000])
  cases = [
      (tmp_path / "nowhere", f"dataset 'tin3_0': npz file not found: {tmp_path}/nowhere/{NPZ}"),
      (truncated, f"dataset 'tin3_0': cannot read {truncated}/{NPZ} as an .npz of x_train, "
       "y_train, x_test, y_test (BadZipFile: File is not a zip file)"),
      (_npz(tmp_path / "no_y_test", y_test=None),
       f"{tmp_path}/no_y_test/{NPZ}: missing array 'y_test' (has: x_train, y_train, x_test; "
       "needs: x_train, y_train, x_test, y_test)"),
      (_npz(tmp_path / "float", x_train=np.zeros((300, 8, 8, 3), np.float32)),
       f"{tmp_path}/float/{NPZ}: x_train must be uint8 [N,H,W(,C)] with len(y_train) rows; got "
       "float32 (300, 8, 8, 3) and 300 labels"),
      (_npz(tmp_path / "flat", x_test=np.zeros((300, 64), np.uint8)),
       f"{tmp_path}/flat/{NPZ}: x_test must be uint8 [N,H,W(,C)] with len(y_test) rows; got "
       "uint8 (300, 64) and 300 labels"),
      (_npz(tmp_path / "float_labels", y_train=np.zeros(300, np.float32)),
       f"{tmp_path}/float_labels/{NPZ}: y_train must hold integer class ids, got float32"),
      (_npz(tmp_path / "negative", y_train=np.arange(300) % 30 - 1),
       f"{tmp_path}/negative/{NPZ} (y_train): label -1 outside [0, 30) (10 such labels)"),
      (_npz(tmp_path / "empty", x_train=np.zeros((0, 8, 8, 3), np.uint8),
            y_train=np.zeros(0, np.int64)),
       "dataset 'tin3_0': classes [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] select no train examples "
       "(0 train / 100 test examples kept)"),
      # labels 0-9 and 29 only: classes 10-19 are valid ids that no example has
      (_npz(tmp_path / "gap", y_train=np.where(np.arange(300) % 30 < 10, np.arange(300) % 10, 29),
            y_test=np.arange(300) % 10),
       "dataset 'tin3_1': classes [10, 11, 12, 13, 14, 15, 16, 17, 18, 19] select no train "
       "examples (0 train / 0 test examples kept)"),
  ]
  for data_root, error in cases:
    stderr = _fail(workdir, TIN, f"--config.data_root={data_root}")
    assert stderr == f"mlfd_jax: error: {error}{TRACE}\n", data_root


def test_an_unreadable_image_in_a_folder_dataset_is_named(workdir, tmp_path):
  pytest.importorskip("tensorflow")
  from PIL import Image
  root = tmp_path / "images"
  for split in ("train", "test"):
    for c in ("cat", "dog"):
      (root / split / c).mkdir(parents=True)
      for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / split / c / f"{i}.png")
  (root / "train" / "dog" / "2.png").write_bytes(b"not an image")
  config = tmp_path / "folder_config.py"
  config.write_text(
      "from configs import digits\n\n\ndef get_config(arg=None):\n"
      "  c = digits.get_config('tiny')\n"
      f"  c.datasets.digits_a = dict(source='folder', path={str(root)!r}, image_size=16,\n"
      "                             val_fraction=0.0, flip=False, pad=2)\n"
      "  return c\n")
  stderr = _fail(tmp_path / "fresh", f"--config={config}", "--config.stage=teachers")
  assert stderr == (f"mlfd_jax: error: dataset 'digits_a': unreadable image "
                    f"{root}/train/dog/2.png (not a JPEG, PNG, GIF or BMP file){TRACE}\n")


def test_missing_and_mismatched_checkpoints(workdir, tmp_path):
  cmd = "python -m mlfd_jax.main --config=configs/digits.py:tiny --workdir={w} --config.stage={s}"
  empty = tmp_path / "empty"
  empty.mkdir()
  # The suggested command keeps the command's other overrides (the seed makes other teachers).
  assert _fail(empty, DIGITS, "--config.seed=3", "--config.stage=joint") == (
      f"mlfd_jax: error: no teacher of digits_a checkpoint in {empty}/teachers/digits_a; make it "
      f"with: python -m mlfd_jax.main --config=configs/digits.py:tiny --workdir={empty} "
      f"--config.seed=3 --config.stage=teachers{TRACE}\n")
  assert _fail(workdir, DIGITS, "--config.stage=students") == (
      f"mlfd_jax: error: no joint teacher checkpoint in {workdir}/joint/joint; make it with: "
      f"{cmd.format(w=workdir, s='joint')}{TRACE}\n")
  assert _fail(empty, DIGITS, "--config.stage=eval") == (
      f"mlfd_jax: error: nothing to evaluate: no checkpoint of this config's models in {empty}; "
      f"train them first with {cmd.format(w=empty, s='all')}{TRACE}\n")
  stderr = _fail(workdir, DIGITS, "--config.stage=teachers", "--config.teachers.digits_a.width=0.25")
  assert stderr.startswith(f"mlfd_jax: error: {workdir}/teachers/digits_a holds checkpoints made "
                           "with model="), stderr
  assert stderr.endswith(f"; use another --workdir or delete that directory{TRACE}\n")
  assert stderr.count("\n") == 1


def test_a_workdir_that_cannot_be_used(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  assert _fail(blocker, DIGITS) == (
      f"mlfd_jax: error: workdir {blocker} is a file, not a directory{TRACE}\n")
  assert _fail(blocker / "sub", DIGITS) == (
      f"mlfd_jax: error: workdir {blocker}/sub is not writable (Not a directory){TRACE}\n")
  assert blocker.read_text() == "x"


def test_a_write_that_fails_mid_run_keeps_what_was_saved(workdir, tmp_path):
  """A full disk, simulated by a file-size limit (writes past it fail with EFBIG): the joint
  teacher's first save fails; no step is half-written, the teachers are untouched, and the
  rerun finishes. This is
  the one row whose stderr is not one line: the libraries report the failed writes on their
  own (the compilation cache warns, orbax's and tensorstore's writer threads print
  tracebacks, some of them during the interpreter's shutdown), around the run's one line."""
  def small_files():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))

  # JAX writes compilation-cache entries in place and never rewrites one that exists: entries
  # cut at the size limit would make every later test recompile those programs. Keep them here.
  stderr = _fail(workdir, DIGITS, "--config.stage=joint", preexec_fn=small_files,
                 env_extra={"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache")})
  ours = re.findall(r"mlfd_jax: [^\n]*", stderr)  # (a writer thread may not end its line)
  assert ours == [f"mlfd_jax: error: cannot write checkpoint step 2 to {workdir}/joint/joint "
                  f"(File too large); the steps saved before it are kept{TRACE}"]
  joint = workdir / "joint" / "joint"
  assert not [p for p in joint.iterdir() if p.name.isdigit()]  # no step: nothing half-written
  # A writer thread may still leave orbax's temporary folder; opening the directory again
  # removes it, and the same command then trains the joint teacher to the end.
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  r = subprocess.run([sys.executable, "-m", "mlfd_jax.main", DIGITS, f"--workdir={workdir}",
                      "--config.stage=joint"], cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert sorted(p.name for p in joint.iterdir() if p.is_dir()) == ["2", "4"]
