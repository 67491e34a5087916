"""Class subsets: how one labelled dataset becomes several disjoint datasets (one teacher each).

A dataset config with `classes=[c0, c1, ...]` keeps only those original classes and relabels them
0..n-1 in the listed order; `class_subsets` makes the usual split into k contiguous groups.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def class_subsets(num_classes: int, k: int) -> list[list[int]]:
  """k disjoint contiguous groups covering range(num_classes); sizes differ by at most one.

  The first `num_classes % k` groups get the extra class: (10, 3) -> [[0..3], [4..6], [7..9]].
  """
  if k < 1 or k > num_classes:
    raise ValueError(f"cannot split {num_classes} classes into {k} non-empty subsets")
  size, extra = divmod(num_classes, k)
  out, start = [], 0
  for i in range(k):
    stop = start + size + (i < extra)
    out.append(list(range(start, stop)))
    start = stop
  return out


def check_classes(classes: Sequence[int], num_classes: int, where: str) -> None:
  """Listed class ids must be distinct and exist in the source."""
  if len(set(classes)) != len(classes) or not classes:
    raise ValueError(f"{where}: classes must be a non-empty list of distinct ids, got {classes}")
  bad = [c for c in classes if not 0 <= c < num_classes]
  if bad:
    raise ValueError(f"{where}: classes {bad} not in [0, {num_classes})")


def label_lookup(classes: Sequence[int], num_classes: int) -> np.ndarray:
  """Table original id -> new id (-1: dropped); used by both the numpy and the tf.data path."""
  table = np.full(num_classes, -1, np.int32)
  table[np.asarray(classes, np.int64)] = np.arange(len(classes), dtype=np.int32)
  return table


def select_classes(labels: np.ndarray, classes: Sequence[int] | None,
                   num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """(indices kept, their new labels) for a label array; all of them when classes is None."""
  if classes is None:
    return np.arange(len(labels)), labels.astype(np.int32)
  new = label_lookup(classes, num_classes)[labels]
  keep = np.flatnonzero(new >= 0)
  return keep, new[keep]
