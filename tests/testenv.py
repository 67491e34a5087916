"""The XLA flags of the commands the tests start: one place that says how many fake CPU devices
each sees (the test process itself gets 8, from conftest.py)."""

import os


def xla_flags(devices: int) -> str:
  """`devices` fake CPU devices."""
  return f"--xla_force_host_platform_device_count={devices}"


def env(devices: int, **extra: str) -> dict[str, str]:
  """This process's environment for a command on `devices` fake CPU devices."""
  return {**os.environ, "XLA_FLAGS": xla_flags(devices), **extra}
