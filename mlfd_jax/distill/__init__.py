"""Distillation methods: one registry, one small module per method, one interface (`base.py`)."""

from mlfd_jax.distill.base import (METHODS, Method, MethodConfig, Source,  # noqa: F401
                                   build_method, generations)
from mlfd_jax.distill import amtml, avg_kd, feed, kd, mlfd  # noqa: F401  (registers them)
