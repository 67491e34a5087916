"""Accuracy counts, summed (not averaged) so padded eval batches and many devices add up exactly."""

from __future__ import annotations

import jax.numpy as jnp


def topk_correct(logits, labels, k: int, mask=None):
  """Number of rows whose label is among the k highest logits (k is capped at the class count)."""
  k = min(k, logits.shape[-1])
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  # Rank = how many classes score strictly higher than the label; ties count in the label's favour.
  rank = jnp.sum(logits > label_logit, axis=-1)
  hit = (rank < k).astype(jnp.float32)
  if mask is not None:
    hit = hit * mask.astype(jnp.float32)
  return jnp.sum(hit)


def top1_accuracy(logits, labels):
  return topk_correct(logits, labels, 1) / labels.shape[0]
