"""Every test process sees 8 fake CPU devices, so sharding is exercised on a laptop/CI box."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Many tests compile the same tiny programs; share compilations across tests and processes.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.expanduser("~"), ".cache", "mlfd_jax_tests", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pathlib  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))


@pytest.fixture
def digits_config():
  """The offline demo's `tiny` variant: a few steps per stage."""
  from configs import digits
  return digits.get_config("tiny")


# The longest files, longest first. `--dist loadfile` hands files to the two workers in collection
# order, so these start first and the short ones fill in beside them, instead of one worker
# finishing a long file alone at the end (measured on 2 cores: test_resume.py alone was the last
# 8 minutes of the run).
SLOW_FILES = ("test_resume.py", "test_multiprocess.py", "test_cli.py",
              "test_resume_teacher_sourced.py", "test_imagenet_subsets.py", "test_determinism.py",
              "test_bucket_workdir.py", "test_bare_jax.py", "test_benchmarks.py", "test_mlfd.py")


def pytest_configure(config):
  # xdist reorders files by their number of tests, most first, unless told not to: that put the
  # one-test slow files last (seen in a full run), undoing the order below.
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOW_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable: files stay whole
