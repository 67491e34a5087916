"""Loss terms shared by the stages and distillation methods. Pure jax.numpy, float32 math."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Mean softmax cross-entropy over the rows."""
  logits = logits.astype(jnp.float32)
  onehot = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    onehot = optax.smooth_labels(onehot, label_smoothing)
  per_row = optax.softmax_cross_entropy(logits, onehot)
  return jnp.mean(per_row)


def kd_kl(student_logits, teacher_logits, temperature: float):
  """T^2 * KL(softmax(z_T/T) || softmax(z_S/T)), the Hinton et al. term, mean over rows."""
  t = float(temperature)
  log_p_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t)
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t)
  per_row = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
  return t * t * jnp.mean(per_row)


def mse(a, b):
  """Mean squared error over all elements (PyTorch's `MSELoss()` default)."""
  return jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))


def kd_kl_to_probs(student_logits, target_probs, temperature: float):
  """T^2 * KL(q || softmax(z_S/T)) for a target distribution q (e.g. a teacher ensemble)."""
  t = float(temperature)
  q = target_probs.astype(jnp.float32)
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t)
  per_row = jnp.sum(q * (jnp.log(jnp.maximum(q, 1e-12)) - log_p_s), axis=-1)
  return t * t * jnp.mean(per_row)


def l2_normalize(x, axis, eps: float = 1e-12):
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True)), eps)


def rkd_distance(s, t):
  """RKD distance term: smooth-L1 between mean-normalised pairwise distances of two batches."""
  def pdist(x):
    x = x.reshape(x.shape[0], -1).astype(jnp.float32)
    sq = jnp.sum(jnp.square(x[:, None] - x[None]), -1)
    d = jnp.sqrt(jnp.maximum(sq, 1e-12)) * (1.0 - jnp.eye(x.shape[0]))
    return d / jnp.maximum(jnp.sum(d) / (x.shape[0] * (x.shape[0] - 1)), 1e-12)
  return jnp.mean(optax.huber_loss(pdist(s), pdist(t), delta=1.0))


def rkd_angle(s, t):
  """RKD angle term: smooth-L1 between the cosines of the angles of every triplet."""
  def angles(x):
    x = x.reshape(x.shape[0], -1).astype(jnp.float32)
    e = l2_normalize(x[None, :] - x[:, None], axis=-1)  # e[i, j] = unit(x_j - x_i)
    return jnp.einsum("ijd,ikd->ijk", e, e)
  return jnp.mean(optax.huber_loss(angles(s), angles(t), delta=1.0))


def multihead_ce(logits_per_head, labels, dataset_ids, label_smoothing: float):
  """(mean over the batch of each sample's cross-entropy on its own dataset's head, top-1):
  the loss of models with one head per dataset (joint teacher, joint baseline)."""
  total, correct = 0.0, 0.0
  for k, logits in enumerate(logits_per_head):
    mine = dataset_ids == k
    lab = jnp.where(mine, labels, 0)
    onehot = jax.nn.one_hot(lab, logits.shape[-1])
    if label_smoothing:
      onehot = optax.smooth_labels(onehot, label_smoothing)
    total = total + jnp.sum(optax.softmax_cross_entropy(logits, onehot) * mine)
    correct = correct + jnp.sum((jnp.argmax(logits, -1) == lab) * mine)
  n = labels.shape[0]
  return total / n, correct / n
