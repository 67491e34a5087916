"""What every dataset looks like to the training loop, and the helpers the backends share.

A dataset yields host-side numpy batches `{'image': uint8 [b,S,S,3], 'label': int32 [b]}` (plus
`'mask'` for eval, `'dataset'` for mixtures) where `b = global_batch // process_count`; the loop
turns them into global arrays. Training streams are a pure function of (seed, step) so a resumed
run sees exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import collections
from typing import Any, Iterator, Mapping, Protocol, Sequence

import numpy as np

from mlfd_jax.registry import Registry

Batch = dict[str, np.ndarray]
SPLITS = ("train", "val", "test")

# Every source builds a Dataset from a config; see `build_dataset`.
DATASETS: Registry = Registry("dataset source")

REQUIRED = object()  # Marks a config key without a default.
COMMON_KEYS: dict[str, Any] = {
    "name": REQUIRED,
    "source": REQUIRED,
    "image_size": REQUIRED,
    "val_fraction": 0.1,
    "split_seed": 0,
    "classes": None,
    "flip": False,
    "pad": 4,
}


class Dataset(Protocol):
  """The interface the training loop relies on (arrays, tf.data and mixtures all provide it)."""

  name: str
  num_classes: Any  # int; a tuple of ints for a mixture.
  image_size: int
  flip: bool  # Horizontal flips make sense for this data (augment.augment's `flip`).
  pad: int  # Random-crop padding (augment.augment's `pad`).

  def num_examples(self, split: str) -> int:
    ...

  def train_batches(self, global_batch: int, seed: int = 0, start_step: int = 0,
                    process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
    ...

  def eval_batches(self, split: str, global_batch: int, process_index: int = 0,
                   process_count: int = 1) -> Iterator[Batch]:
    ...


def build_dataset(cfg) -> Dataset:
  """Builds the dataset one config block describes (`cfg.source` picks the backend)."""
  cfg = to_dict(cfg)
  if "source" not in cfg:
    raise ValueError(f"dataset config {cfg.get('name', '?')!r} has no 'source'; "
                     f"valid: {', '.join(DATASETS.names())}")
  return DATASETS.get(cfg["source"])(cfg)


def to_dict(cfg) -> dict[str, Any]:
  """ConfigDict or mapping -> plain dict (the backends never see ConfigDict semantics)."""
  if hasattr(cfg, "to_dict"):
    cfg = cfg.to_dict()
  return dict(cfg)


def parse_config(cfg: Mapping[str, Any], source_keys: Mapping[str, Any]) -> dict[str, Any]:
  """Fills defaults and rejects unknown or missing keys, naming them.

  `source_keys` maps the source's own keys to defaults (`REQUIRED`: no default). A typo must fail
  loudly: a silently ignored `val_fration` would change which examples are held out.
  """
  spec = {**COMMON_KEYS, **source_keys}
  name = cfg.get("name", "?")
  for key in cfg:
    if key not in spec:
      raise ValueError(f"dataset {name!r} (source {cfg.get('source')!r}): unknown config key "
                       f"{key!r}; valid: {', '.join(sorted(spec))}")
  out = {}
  for key, default in spec.items():
    value = cfg.get(key, default)
    if value is REQUIRED:
      raise ValueError(f"dataset {name!r}: missing config key {key!r}")
    out[key] = value
  if not 0.0 <= float(out["val_fraction"]) < 1.0:
    raise ValueError(f"dataset {name!r}: val_fraction must be in [0, 1), got {out['val_fraction']}")
  if int(out["image_size"]) <= 0:
    raise ValueError(f"dataset {name!r}: image_size must be positive, got {out['image_size']}")
  if out["classes"] is not None:
    out["classes"] = [int(c) for c in out["classes"]]
  return out



def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")


def local_batch_size(global_batch: int, process_index: int, process_count: int) -> int:
  """Rows this process contributes to each global batch."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"bad process_index/process_count {process_index}/{process_count}")
  if global_batch <= 0 or global_batch % process_count:
    raise ValueError(f"global batch {global_batch} must be a positive multiple of "
                     f"process_count {process_count}")
  return global_batch // process_count


def derive_seed(*ints: int) -> int:
  """One well-mixed 31-bit seed from several ints (for tf ops that take a single int seed)."""
  return int(np.random.SeedSequence([int(i) for i in ints]).generate_state(1)[0] >> 1)


class EpochPermutations:
  """Stream position -> example index; epoch `pos // n` is a permutation seeded by (seed, epoch).

  Any position is computable directly, so resuming at step s costs one permutation, not s steps.
  """

  def __init__(self, n: int, seed: int):
    if n <= 0:
      raise ValueError("cannot draw training examples from an empty split")
    self.n, self.seed = n, int(seed)
    self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._cache:
      self._cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
      while len(self._cache) > 2:
        self._cache.popitem(last=False)
    return self._cache[epoch]

  def __call__(self, positions: np.ndarray) -> np.ndarray:
    positions = np.asarray(positions, np.int64)
    epochs, offsets = np.divmod(positions, self.n)
    out = np.empty_like(positions)
    for e in np.unique(epochs):
      sel = epochs == e
      out[sel] = self._perm(int(e))[offsets[sel]]
    return out


def carve_val(labels: np.ndarray, val_fraction: float,
              split_seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits train indices into (train, val), stratified by class, fixed by `split_seed` alone.

  Stratified so a small class subset still has every class in val; independent of the training
  seed so model selection always sees the same held-out examples.
  """
  rng = np.random.default_rng([int(split_seed), 0x5EED])
  val = []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    val.append(rng.permutation(idx)[: int(round(val_fraction * len(idx)))])
  val = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
  train = np.setdiff1d(np.arange(len(labels)), val)
  return train, val


def shard_bounds(n: int, process_index: int, process_count: int) -> tuple[int, int]:
  """Contiguous shard [lo, hi) of n items for one process; sizes differ by at most one."""
  lo = n * process_index // process_count
  return lo, n * (process_index + 1) // process_count


def eval_positions(n: int, global_batch: int, process_index: int,
                   process_count: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(indices, mask) per eval batch: process p takes rows [p*b, (p+1)*b) of each global batch.

  Every process gets the same number of batches (collectives need that); rows past the end point
  at example 0 and are masked out.
  """
  b = local_batch_size(global_batch, process_index, process_count)
  for start in range(0, n, global_batch):
    pos = start + process_index * b + np.arange(b)
    mask = pos < n
    yield np.where(mask, pos, 0), mask


def padded_batch_count(counts: Sequence[int], b: int) -> int:
  """Eval batches per process when process i holds counts[i] examples (the max, for collectives)."""
  return max((-(-c // b) for c in counts), default=0)
