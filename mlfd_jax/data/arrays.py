"""In-memory backend: whole datasets as numpy arrays (npz files, scikit-learn digits).

Images are fitted to the model's resolution once at load time; batches are then plain fancy
indexing, and batch s is computed directly from (seed, s): resume costs nothing and the
process-local batches (rows [p*b, (p+1)*b) of the global batch) reassemble exactly into the
single-process batch.
"""

from __future__ import annotations

import importlib.util
import os
import zipfile
from typing import Any, Iterator, Sequence

import numpy as np

from mlfd_jax import fileio
from mlfd_jax.data import base
from mlfd_jax.data import preprocess
from mlfd_jax.data import subsets

_ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
_CHUNK = 256  # Examples per host->tf.data hand-off when an array dataset joins a tf.data mixture.


class ArrayDataset:
  """A dataset held in memory. `splits[s]` maps 'image' (unfitted), 'label' and optionally
  'dataset' (mixtures) to arrays of equal length."""

  def __init__(self, name: str, splits: dict[str, dict[str, np.ndarray]], num_classes: Any,
               image_size: int, *, flip: bool = False, pad: int = 4, members: tuple = ()):
    self.name, self.num_classes, self.image_size = name, num_classes, int(image_size)
    self.flip, self.pad = bool(flip), int(pad)
    self.members = tuple(members)  # The original datasets of a mixture; () otherwise.
    self._unfitted = splits
    self._splits = {s: {**arrs, "image": preprocess.fit_numpy(arrs["image"], self.image_size)}
                    for s, arrs in splits.items()}

  def with_image_size(self, image_size: int) -> "ArrayDataset":
    """Same data fitted (from the original pixels) to another resolution."""
    if image_size == self.image_size:
      return self
    return ArrayDataset(self.name, self._unfitted, self.num_classes, image_size,
                        flip=self.flip, pad=self.pad, members=self.members)

  def arrays(self, split: str) -> dict[str, np.ndarray]:
    """The fitted arrays of one split (read-only use)."""
    base.check_split(split)
    return self._splits[split]

  def num_examples(self, split: str) -> int:
    return len(self.arrays(split)["label"])

  def _take(self, split: str, idx: np.ndarray) -> base.Batch:
    return {k: v[idx] for k, v in self._splits[split].items()}

  def train_batches(self, global_batch: int, seed: int = 0, start_step: int = 0,
                    process_index: int = 0, process_count: int = 1) -> Iterator[base.Batch]:
    b = base.local_batch_size(global_batch, process_index, process_count)
    perm = base.EpochPermutations(self.num_examples("train"), seed)
    rows = process_index * b + np.arange(b)
    step = int(start_step)
    while True:
      idx = perm(step * global_batch + rows)
      # `index`: each row's position in the train split, for outputs precomputed per example
      # (stages/precomputed.py).
      yield {**self._take("train", idx), "index": idx.astype(np.int32)}
      step += 1

  def eval_batches(self, split: str, global_batch: int, process_index: int = 0,
                   process_count: int = 1) -> Iterator[base.Batch]:
    n = self.num_examples(split)
    for idx, mask in base.eval_positions(n, global_batch, process_index, process_count):
      batch = self._take(split, idx)
      batch["image"][~mask] = 0
      batch["label"][~mask] = 0
      batch["mask"] = mask
      yield batch

  # tf.data member protocol (see streaming.py), so arrays can join a mixture with tf.data sources.

  def _stream_counts(self, split: str, process_count: int) -> list[int]:
    n = self.num_examples(split)
    return [hi - lo for lo, hi in (base.shard_bounds(n, p, process_count)
                                   for p in range(process_count))]

  def _tf_train(self, seed: int, start: int, process_index: int, process_count: int):
    lo, hi = base.shard_bounds(self.num_examples("train"), process_index, process_count)

    def chunks():
      perm, j = base.EpochPermutations(hi - lo, seed), int(start)
      while True:
        batch = self._take("train", lo + perm(np.arange(j, j + _CHUNK)))
        yield {"image": batch["image"], "label": batch["label"]}
        j += _CHUNK

    return _from_chunks(chunks, self.image_size)

  def _tf_eval(self, split: str, process_index: int, process_count: int):
    lo, hi = base.shard_bounds(self.num_examples(split), process_index, process_count)

    def chunks():
      for i in range(lo, hi, _CHUNK):
        batch = self._take(split, np.arange(i, min(i + _CHUNK, hi)))
        yield {"image": batch["image"], "label": batch["label"]}

    return _from_chunks(chunks, self.image_size)


def _from_chunks(chunks, image_size: int):
  from mlfd_jax import tf_import  # pylint: disable=g-import-not-at-top  # tf.data mixtures only
  tf = tf_import.tensorflow()

  spec = {"image": tf.TensorSpec([None, image_size, image_size, 3], tf.uint8),
          "label": tf.TensorSpec([None], tf.int32)}
  return tf.data.Dataset.from_generator(chunks, output_signature=spec).unbatch()


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise ValueError(f"{where}: label {int(bad[0])} outside [0, {num_classes}) "
                     f"({bad.size} such labels)")


def from_arrays(cfg: dict[str, Any], x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                y_test: np.ndarray, num_classes: int) -> ArrayDataset:
  """Applies a parsed config's class subset and val carve to raw train/test arrays."""
  name = cfg["name"]
  classes = cfg["classes"]
  if classes is not None:
    subsets.check_classes(classes, num_classes, f"dataset {name!r}")
  keep_tr, y_train = subsets.select_classes(y_train, classes, num_classes)
  keep_te, y_test = subsets.select_classes(y_test, classes, num_classes)
  x_train, x_test = x_train[keep_tr], x_test[keep_te]
  tr, va = base.carve_val(y_train, float(cfg["val_fraction"]), int(cfg["split_seed"]))
  splits = {
      "train": {"image": x_train[tr], "label": y_train[tr]},
      "val": {"image": x_train[va], "label": y_train[va]},
      "test": {"image": x_test, "label": y_test},
  }
  for split, arrs in splits.items():
    if not len(arrs["label"]) and (split != "val" or float(cfg["val_fraction"]) > 0):
      what = (f"classes {list(classes)} select" if classes is not None else "the source has")
      raise ValueError(f"dataset {name!r}: {what} no {split} examples "
                       f"({len(keep_tr)} train / {len(keep_te)} test examples kept)")
  return ArrayDataset(name, splits, len(classes) if classes is not None else num_classes,
                      cfg["image_size"], flip=cfg["flip"], pad=cfg["pad"])


@base.DATASETS.register("npz")
def npz_source(cfg) -> ArrayDataset:
  """`path`: an .npz with x_train, y_train, x_test, y_test (uint8 NHWC or NHW, int labels)."""
  cfg = base.parse_config(cfg, {"path": base.REQUIRED, "num_classes": None})
  path = fileio.expand(str(cfg["path"]))
  if not fileio.isfile(path):
    raise FileNotFoundError(f"dataset {cfg['name']!r}: npz file not found: {path}")
  try:
    with fileio.path(path).open("rb") as fh, np.load(fh) as f:
      missing = [key for key in _ARRAY_KEYS if key not in f.files]
      if missing:
        raise ValueError(f"{path}: missing array {missing[0]!r} (has: {', '.join(f.files)}; "
                         f"needs: {', '.join(_ARRAY_KEYS)})")
      arrs = {key: f[key] for key in _ARRAY_KEYS}
  except (OSError, EOFError, zipfile.BadZipFile, ValueError) as e:
    if str(e).startswith(path):
      raise
    raise ValueError(f"dataset {cfg['name']!r}: cannot read {path} as an .npz of "
                     f"{', '.join(_ARRAY_KEYS)} ({type(e).__name__}: {e})") from None
  for split in ("train", "test"):
    x, y = arrs[f"x_{split}"], arrs[f"y_{split}"]
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or len(x) != len(y):
      raise ValueError(f"{path}: x_{split} must be uint8 [N,H,W(,C)] with len(y_{split}) rows; "
                       f"got {x.dtype} {x.shape} and {len(y)} labels")
    if not np.issubdtype(y.dtype, np.integer):
      raise ValueError(f"{path}: y_{split} must hold integer class ids, got {y.dtype}")
  ys = [arrs["y_train"].astype(np.int64), arrs["y_test"].astype(np.int64)]
  num_classes = cfg["num_classes"]
  if num_classes is None:
    num_classes = int(max(y.max(initial=-1) for y in ys)) + 1
  for split, y in zip(("y_train", "y_test"), ys):
    check_labels(y, int(num_classes), f"{path} ({split})")
  return from_arrays(cfg, arrs["x_train"], ys[0].astype(np.int32), arrs["x_test"],
                     ys[1].astype(np.int32), int(num_classes))


def sklearn_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 8x8 digits: images (1797, 8, 8) with values 0..16, and labels.

  Read from the CSV that scikit-learn ships (`sklearn/datasets/data/digits.csv.gz`, what
  `load_digits` reads) without importing scikit-learn: that import is about 2 s, most of a tiny
  run's start-up. Falls back to `load_digits` where the file is not there.
  """
  spec = importlib.util.find_spec("sklearn")
  if spec is None or not spec.submodule_search_locations:
    raise ValueError("data source 'sklearn_digits' needs scikit-learn (pip install scikit-learn)")
  path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
  if os.path.exists(path):
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int32)
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  digits = sk_datasets.load_digits()
  return digits.images, digits.target.astype(np.int32)


@base.DATASETS.register("sklearn_digits")
def sklearn_digits_source(cfg) -> ArrayDataset:
  """scikit-learn's bundled 8x8 digits: offline, tiny, real.

  Same pixels and split as ../shared/data/sklearn_digits_8.npz: values round(v * 255 / 16), test =
  the first 360 of `default_rng(0).permutation(1797)`, train = the rest in that order.
  """
  cfg = base.parse_config(cfg, {})
  images, y = sklearn_digits_arrays()
  x = np.round(images * 255.0 / 16.0).astype(np.uint8)[..., None]
  perm = np.random.default_rng(0).permutation(len(y))
  n_test = int(np.ceil(0.2 * len(y)))
  test, train = perm[:n_test], perm[n_test:]
  return from_arrays(cfg, x[train], y[train], x[test], y[test], 10)


def mix_arrays(datasets: Sequence[ArrayDataset], name: str) -> ArrayDataset:
  """In-memory mixture: the concatenation, drawn uniformly, so each member's share of every epoch
  is exactly proportional to its train size."""
  size = max(d.image_size for d in datasets)
  members = [d.with_image_size(size) for d in datasets]
  splits = {}
  for split in base.SPLITS:
    parts = [m.arrays(split) for m in members]
    splits[split] = {
        "image": np.concatenate([p["image"] for p in parts]),
        "label": np.concatenate([p["label"] for p in parts]).astype(np.int32),
        "dataset": np.concatenate([np.full(len(p["label"]), i, np.int32)
                                   for i, p in enumerate(parts)]),
    }
  return ArrayDataset(name, splits, tuple(m.num_classes for m in members), size,
                      flip=all(m.flip for m in members), pad=min(m.pad for m in members),
                      members=datasets)
