"""Loss terms shared by the stages and distillation methods. Pure jax.numpy, float32 math."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits, labels, label_smoothing: float = 0.0, mask=None):
  """Mean softmax cross-entropy over the rows where `mask` is true (all rows if None)."""
  logits = logits.astype(jnp.float32)
  onehot = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    onehot = optax.smooth_labels(onehot, label_smoothing)
  per_row = optax.softmax_cross_entropy(logits, onehot)
  return masked_mean(per_row, mask)


def kd_kl(student_logits, teacher_logits, temperature: float, mask=None):
  """T^2 * KL(softmax(z_T/T) || softmax(z_S/T)), the Hinton et al. term, mean over rows."""
  t = float(temperature)
  log_p_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t)
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t)
  per_row = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
  return t * t * masked_mean(per_row, mask)


def mse(a, b):
  """Mean squared error over all elements (PyTorch's `MSELoss()` default)."""
  return jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))


def masked_mean(x, mask=None):
  if mask is None:
    return jnp.mean(x)
  mask = mask.astype(x.dtype)
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)
