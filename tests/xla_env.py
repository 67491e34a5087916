"""XLA_FLAGS for the tests' processes: fake CPU devices, and cheaper XLA:CPU compilation.

The tests compile many small programs, each once; with a cold compilation cache that was about
half of a run (tests/test_determinism.py on a 2-core AMD EPYC Zen 3: 227 s cold, 123 s warm).
LLVM's -O1 without its expensive passes cut the cold run to 167 s. Programs compiled so differ
from the default compilation in their last bits; every bitwise test compares two runs made under
the same flags, and the one that checks a compilation against XLA's default names the default's
options itself (tests/test_train.py)."""

FAST_COMPILE = "--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true"


def flags(devices: int) -> str:
  """XLA_FLAGS for a process with `devices` fake CPU devices."""
  return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"
