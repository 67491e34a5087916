"""Datasets: sources, class subsets, mixtures, preprocessing and on-device augmentation.

  ds = data.build_dataset(cfg)        # one config block -> a `Dataset` (see base.py)
  joint = data.mix([ds_a, ds_b])      # the joint teacher's / joint baseline's data

Sources (`cfg.source`): 'sklearn_digits', 'npz' (arrays.py, in memory) and 'tfds', 'folder'
(streaming.py, tf.data). TensorFlow is imported only when a tf.data source or mixture is built,
so the compute core runs without it.
"""

from __future__ import annotations

from typing import Sequence

from mlfd_jax.data import arrays
from mlfd_jax.data import augment
from mlfd_jax.data import base
from mlfd_jax.data import preprocess
from mlfd_jax.data import subsets
from mlfd_jax.data.base import Batch, Dataset, DATASETS, SPLITS, build_dataset
from mlfd_jax.data.subsets import class_subsets


def _tfds_source(cfg):
  from mlfd_jax.data import streaming  # pylint: disable=g-import-not-at-top
  return streaming.tfds_source(cfg)


def _folder_source(cfg):
  from mlfd_jax.data import streaming  # pylint: disable=g-import-not-at-top
  return streaming.folder_source(cfg)


DATASETS.add("tfds", _tfds_source)
DATASETS.add("folder", _folder_source)


def mix(datasets: Sequence[Dataset], name: str = "joint") -> Dataset:
  """One dataset drawing from all members, proportionally to their train sizes.

  Batches carry 'dataset' (index into `datasets`); labels stay in each member's label space;
  `num_classes` is the tuple of the members' counts; images are fitted to the largest member
  resolution; `flip` only if every member allows it (per-row: `[m.flip for m in mixed.members]`
  indexed by 'dataset'); `pad` is the members' minimum.
  """
  datasets = list(datasets)
  if not datasets:
    raise ValueError("mix() needs at least one dataset")
  if all(isinstance(d, arrays.ArrayDataset) for d in datasets):
    return arrays.mix_arrays(datasets, name)
  from mlfd_jax.data import streaming  # pylint: disable=g-import-not-at-top
  return streaming.StreamingMix(datasets, name)


__all__ = [
    "Batch", "Dataset", "DATASETS", "SPLITS", "arrays", "augment", "base", "build_dataset",
    "class_subsets", "mix", "preprocess", "subsets",
]
