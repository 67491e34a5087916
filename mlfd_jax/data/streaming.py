"""tf.data backend: TFDS datasets by name and image folders, for data that does not fit in memory.

Only this module (and `fit_tf`) imports TensorFlow; the package registers these sources lazily, so
the compute core runs where TensorFlow is absent.

A tf.data source implements three methods (ArrayDataset has them too, so any mix works):
  `_stream_counts(split, P)` -> examples in each process's shard;
  `_tf_train(seed, start, p, P)` -> infinite unbatched {'image','label'} stream of process p's
     shard, starting at its `start`-th example (a pure function of seed and position);
  `_tf_eval(split, p, P)` -> process p's shard of a split, in a fixed order.
Process p's shard: `tfds.even_splits(split, P)[p]` (TFDS) or the p-th contiguous slice (folders),
so batches are deterministic for a given process count.

Resume cost: TFDS records are read in a fixed order (TFDS shuffles examples when it builds a
dataset) and shuffled per epoch with a buffer seeded by (seed, epoch); starting at step s begins
at epoch s*b // n and skips the s*b % n records already seen in it, reading (not decoding) at most
one epoch. Folders and arrays index a per-epoch permutation directly and skip nothing.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Sequence

import numpy as np

from mlfd_jax import fileio, tf_import

tf = tf_import.tensorflow()
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

from mlfd_jax.data import base  # pylint: disable=wrong-import-position
from mlfd_jax.data import preprocess
from mlfd_jax.data import subsets

# Members of a mixture are sources of this or the array backend: their `_tf_*` methods are shared.
# pylint: disable=protected-access

AUTOTUNE = tf.data.AUTOTUNE
_CHUNK = 4096  # Positions per host-side chunk of indices / mixture choices.
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
_IMAGE_MAGIC = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM")  # JPEG, PNG, GIF, BMP
UNREADABLE = "unreadable"  # per example: the path of a file that is not an image, else ""


def _options() -> tf.data.Options:
  opts = tf.data.Options()
  opts.deterministic = True  # Resume must reproduce batches exactly.
  return opts


class StreamingDataset:
  """Batching, padding and process sharding on top of the three tf.data source methods."""

  name: str
  num_classes: Any
  image_size: int
  flip: bool
  pad: int
  members: tuple = ()

  def num_examples(self, split: str) -> int:
    base.check_split(split)
    return sum(self._stream_counts(split, 1))

  def train_batches(self, global_batch: int, seed: int = 0, start_step: int = 0,
                    process_index: int = 0, process_count: int = 1) -> Iterator[base.Batch]:
    b = base.local_batch_size(global_batch, process_index, process_count)
    ds = self._tf_train(seed, int(start_step) * b, process_index, process_count)
    return _numpy(ds.batch(b, drop_remainder=True), self.name)

  def eval_batches(self, split: str, global_batch: int, process_index: int = 0,
                   process_count: int = 1) -> Iterator[base.Batch]:
    base.check_split(split)
    b = base.local_batch_size(global_batch, process_index, process_count)
    counts = self._stream_counts(split, process_count)
    ds = self._tf_eval(split, process_index, process_count).map(lambda ex: {**ex, "mask": True})
    missing = base.padded_batch_count(counts, b) * b - counts[process_index]
    if missing:
      blank = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
      ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat(missing))
    return _numpy(ds.batch(b, drop_remainder=True), self.name)

  def with_image_size(self, image_size: int):
    """Same data fitted to another resolution (streams fit each decoded original)."""
    if image_size == self.image_size:
      return self
    other = object.__new__(type(self))
    other.__dict__.update(self.__dict__, image_size=int(image_size))
    return other


def _numpy(ds, name: str) -> Iterator[base.Batch]:
  """The batches as numpy; a file tf.data cannot read or decode becomes an input error naming
  the dataset (and the file, where the check in `FolderDataset._load` caught it)."""
  it = ds.prefetch(AUTOTUNE).with_options(_options()).as_numpy_iterator()
  while True:
    try:
      batch = next(it)
    except StopIteration:
      return
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
            tf.errors.DataLossError) as e:
      raise ValueError(f"dataset {name!r}: {_first_line(e.message)}") from None
    bad = [p for p in batch.pop(UNREADABLE, ()) if p]
    if bad:
      raise ValueError(f"dataset {name!r}: unreadable image {bad[0].decode()} (not a JPEG, PNG, "
                       f"GIF or BMP file)")
    yield batch


def _first_line(message: str) -> str:
  """A tf.data error's message without TensorFlow's node and function decorations."""
  line = re.sub(r"\{\{[^}]*\}\}", "", message.split("\n")[0]).split(" [[")[0]
  return line.replace("assertion failed: ", "").replace("] [", " ").strip("[] ")


def _empty(spec):
  return tf.data.Dataset.from_tensors(
      tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), spec)).take(0)


def _chunked(fn, start: int):
  """tf.data stream of fn(chunk)[i] for positions start, start+1, ...; fn maps a chunk id to a
  numpy int64 array of _CHUNK entries."""

  def gen():
    c, skip = divmod(int(start), _CHUNK)
    while True:
      yield fn(c)[skip:]
      c, skip = c + 1, 0

  sig = tf.TensorSpec([None], tf.int64)
  return tf.data.Dataset.from_generator(gen, output_signature=sig).unbatch()


_PERCENT_SLICE = re.compile(r"^(\w+)\[(?:([\d.]+)%)?:(?:([\d.]+)%)?\]$")


def carve_val_split(train_split: str, val_fraction: float) -> tuple[str, str | None]:
  """(train, val) TFDS split strings: val = the last `val_fraction` of `train_split`.

  `train_split` may itself be a percent slice (`train[:80%]` -> `train[:72%]`, `train[72%:80%]`
  for a 10% val), which TFDS cannot slice again.
  """
  if val_fraction == 0:
    return train_split, None
  m = _PERCENT_SLICE.match(train_split)
  if m:
    name, lo, hi = m.group(1), float(m.group(2) or 0), float(m.group(3) or 100)
  elif "[" not in train_split:
    name, lo, hi = train_split, 0.0, 100.0
  else:
    raise ValueError(f"train_split {train_split!r}: only a split name or a percent slice "
                     f"(e.g. 'train[:80%]') can have a val_fraction carved from it")
  cut = round(lo + (hi - lo) * (1.0 - val_fraction), 6)
  return f"{name}[{lo:g}%:{cut:g}%]", f"{name}[{cut:g}%:{hi:g}%]"


class TfdsDataset(StreamingDataset):
  """A TFDS dataset by name, read with images left encoded until after shuffling and skipping.

  val = the last `val_fraction` of the train split by percent slicing (`carve_val_split`;
  TFDS examples are already shuffled), so `split_seed` has no effect here. With
  `classes`, split sizes need one pass over the labels (images stay encoded), done lazily and
  cached; without, they come from the TFDS metadata.
  """

  def __init__(self, cfg: dict[str, Any]):
    self.name, self.image_size = cfg["name"], int(cfg["image_size"])
    self.flip, self.pad = bool(cfg["flip"]), int(cfg["pad"])
    self._buffer = int(cfg["shuffle_buffer"])
    self._builder = tfds.builder(cfg["tfds_name"], data_dir=cfg["data_dir"])
    info = self._builder.info
    keys = info.supervised_keys or (("image", "label") if {"image", "label"} <= set(info.features)
                                    else None)
    if not keys:
      raise ValueError(f"dataset {self.name!r}: TFDS {cfg['tfds_name']!r} has no supervised_keys")
    self._image_key, self._label_key = keys[:2]
    source_classes = info.features[self._label_key].num_classes
    self._lut = None
    if cfg["classes"] is not None:
      subsets.check_classes(cfg["classes"], source_classes, f"dataset {self.name!r}")
      self._lut = subsets.label_lookup(cfg["classes"], source_classes)
    self.num_classes = len(cfg["classes"]) if cfg["classes"] else source_classes
    train, val = carve_val_split(cfg["train_split"], float(cfg["val_fraction"]))
    self._splits = {"train": train, "val": val, "test": cfg["test_split"]}
    self._counts: dict[tuple[str, int, int], int] = {}

  def _split(self, split: str, p: int, count: int):
    name = self._splits[split]
    return name if count == 1 else tfds.even_splits(name, n=count)[p]

  def _records(self, split: str, p: int, count: int):
    """Encoded images and (remapped, filtered) int32 labels, in file order."""
    spec = {"image": tf.TensorSpec([], tf.string), "label": tf.TensorSpec([], tf.int32)}
    if self._splits[split] is None:
      return _empty(spec)
    try:
      ds = self._builder.as_dataset(split=self._split(split, p, count), shuffle_files=False,
                                    decoders={self._image_key: tfds.decode.SkipDecoding()})
    except AssertionError as e:  # TFDS's way of saying that the data was never prepared
      if self._builder.is_prepared():
        raise
      name = self._builder.name
      raise FileNotFoundError(
          f"dataset {self.name!r}: TFDS {name!r} has no prepared data in "
          f"{self._builder.data_dir_root}; prepare it there (`tfds build {name} "
          f"--data_dir={self._builder.data_dir_root}`) or point data_dir (or TFDS_DATA_DIR) at "
          f"where it is") from e
    ik, lk = self._image_key, self._label_key
    ds = ds.map(lambda ex: {"image": ex[ik], "label": tf.cast(ex[lk], tf.int32)})
    if self._lut is not None:
      lut = tf.constant(self._lut)
      ds = ds.map(lambda ex: {**ex, "label": tf.gather(lut, ex["label"])})
      ds = ds.filter(lambda ex: ex["label"] >= 0)
    return ds

  def _decode(self, ex):
    image = self._builder.info.features[self._image_key].decode_example(ex["image"])
    return {"image": preprocess.fit_tf(image, self.image_size), "label": ex["label"]}

  def _count(self, split: str, p: int, count: int) -> int:
    key = (split, p, count)
    if key not in self._counts:
      ds = self._records(split, p, count)
      n = int(ds.cardinality())
      if n < 0:  # Filtered (class subset): one pass over the labels, images left encoded.
        n = int(ds.reduce(np.int64(0), lambda acc, _: acc + 1))
      self._counts[key] = n
    return self._counts[key]

  def _stream_counts(self, split: str, process_count: int) -> list[int]:
    return [self._count(split, p, process_count) for p in range(process_count)]

  def _tf_train(self, seed: int, start: int, p: int, count: int):
    n = self._count("train", p, count)
    if n == 0:
      raise ValueError(f"dataset {self.name!r}: empty train shard {p}/{count}")
    epoch, offset = divmod(int(start), n)
    records = self._records("train", p, count)
    seed0 = base.derive_seed(seed)

    def one_epoch(e):
      return records.shuffle(self._buffer, seed=seed0 * 2**20 + e, reshuffle_each_iteration=False)

    ds = tf.data.Dataset.range(epoch, 2**62).flat_map(one_epoch).skip(offset)
    return ds.map(self._decode, num_parallel_calls=AUTOTUNE)

  def _tf_eval(self, split: str, p: int, count: int):
    return self._records(split, p, count).map(self._decode, num_parallel_calls=AUTOTUNE)


class FolderDataset(StreamingDataset):
  """Images under `path/<split>/<class_name>/*`; class ids = sorted class names of the train
  folder; val carved from train by `split_seed` (stratified), like the array backend."""

  def __init__(self, cfg: dict[str, Any]):
    self.name, self.image_size = cfg["name"], int(cfg["image_size"])
    self.flip, self.pad = bool(cfg["flip"]), int(cfg["pad"])
    root = fileio.expand(str(cfg["path"]))
    train_dir = fileio.join(root, cfg["train_split"])
    if not fileio.isdir(train_dir):
      raise FileNotFoundError(f"dataset {self.name!r}: image folder not found: {train_dir}")
    self.class_names = [d for d in fileio.listdir(train_dir)
                        if fileio.isdir(fileio.join(train_dir, d))]
    if not self.class_names:
      raise ValueError(f"dataset {self.name!r}: no class folders in {train_dir}")
    source_classes = len(self.class_names)
    paths, labels = self._list(train_dir)
    test_paths, test_labels = self._list(fileio.join(root, cfg["test_split"]))
    classes = cfg["classes"]
    if classes is not None:
      subsets.check_classes(classes, source_classes, f"dataset {self.name!r}")
      self.class_names = [self.class_names[c] for c in classes]
    self.num_classes = len(self.class_names)
    keep, labels = subsets.select_classes(labels, classes, source_classes)
    paths = paths[keep]
    keep_te, test_labels = subsets.select_classes(test_labels, classes, source_classes)
    tr, va = base.carve_val(labels, float(cfg["val_fraction"]), int(cfg["split_seed"]))
    self._data = {"train": (paths[tr], labels[tr]), "val": (paths[va], labels[va]),
                  "test": (test_paths[keep_te], test_labels)}

  def _list(self, split_dir: str) -> tuple[np.ndarray, np.ndarray]:
    if not fileio.isdir(split_dir):
      raise FileNotFoundError(f"dataset {self.name!r}: image folder not found: {split_dir}")
    all_names = [d for d in fileio.listdir(split_dir)
                 if fileio.isdir(fileio.join(split_dir, d))]
    index = {c: i for i, c in enumerate(self.class_names)}
    unknown = [c for c in all_names if c not in index]
    if unknown:
      raise ValueError(f"dataset {self.name!r}: {split_dir} has classes not in the train folder: "
                       f"{unknown}")
    paths, labels = [], []
    for c in all_names:
      files = [f for f in fileio.listdir(fileio.join(split_dir, c))
               if f.lower().endswith(_IMAGE_EXTENSIONS)]
      paths += [fileio.join(split_dir, c, f) for f in files]
      labels += [index[c]] * len(files)
    return np.asarray(paths, dtype=object).astype(str), np.asarray(labels, np.int32)

  def _load(self, path, label):
    contents = tf.io.read_file(path)
    # A file that is not an image is not decoded but named in UNREADABLE, and `_numpy` turns it
    # into an input error (decode_image's own error omits the path, and TensorFlow logs it).
    known = tf.reduce_any([tf.strings.substr(contents, 0, len(magic)) == magic
                           for magic in _IMAGE_MAGIC])
    blank = tf.zeros([self.image_size, self.image_size, 3], tf.uint8)
    image = tf.cond(known, lambda: preprocess.fit_tf(tf.io.decode_image(
        contents, channels=0, expand_animations=False), self.image_size), lambda: blank)
    return {"image": image, "label": label, UNREADABLE: tf.where(known, "", path)}

  def _stream_counts(self, split: str, process_count: int) -> list[int]:
    n = len(self._data[split][1])
    return [hi - lo for lo, hi in (base.shard_bounds(n, p, process_count)
                                   for p in range(process_count))]

  def _tf_train(self, seed: int, start: int, p: int, count: int):
    paths, labels = self._data["train"]
    lo, hi = base.shard_bounds(len(labels), p, count)
    perm = base.EpochPermutations(hi - lo, seed)
    idx = _chunked(lambda c: lo + perm(np.arange(c * _CHUNK, (c + 1) * _CHUNK)), start)
    paths_t, labels_t = tf.constant(paths), tf.constant(labels)
    return idx.map(lambda i: self._load(tf.gather(paths_t, i), tf.gather(labels_t, i)),
                   num_parallel_calls=AUTOTUNE)

  def _tf_eval(self, split: str, p: int, count: int):
    paths, labels = self._data[split]
    lo, hi = base.shard_bounds(len(labels), p, count)
    ds = tf.data.Dataset.from_tensor_slices((paths[lo:hi], labels[lo:hi]))
    return ds.map(self._load, num_parallel_calls=AUTOTUNE)


class StreamingMix(StreamingDataset):
  """Mixture of sources of any backend via tf.data: each position draws a member with probability
  proportional to its train size, from chunked choices seeded by (seed, process, chunk); resuming
  recounts how many examples each member gave so far (cheap) and resumes each member there."""

  def __init__(self, datasets: Sequence[Any], name: str):
    self.name, self.members = name, tuple(datasets)
    self.image_size = max(d.image_size for d in datasets)
    self._parts = [d.with_image_size(self.image_size) for d in datasets]
    self.num_classes = tuple(d.num_classes for d in datasets)
    self.flip, self.pad = all(d.flip for d in datasets), min(d.pad for d in datasets)
    sizes = np.asarray([d.num_examples("train") for d in datasets], np.float64)
    self._weights = sizes / sizes.sum()

  def with_image_size(self, image_size: int):
    return self if image_size == self.image_size else StreamingMix(
        [d.with_image_size(image_size) for d in self.members], self.name)

  def _stream_counts(self, split: str, process_count: int) -> list[int]:
    per_member = [m._stream_counts(split, process_count) for m in self._parts]
    return [int(sum(c)) for c in zip(*per_member)]

  def _choices(self, seed: int, p: int):
    def chunk(c: int) -> np.ndarray:
      rng = np.random.default_rng([int(seed), p, c])
      return rng.choice(len(self._parts), size=_CHUNK, p=self._weights).astype(np.int64)
    return chunk

  def _tf_train(self, seed: int, start: int, p: int, count: int):
    chunk = self._choices(seed, p)
    full, rest = divmod(int(start), _CHUNK)
    used = np.zeros(len(self._parts), np.int64)
    for c in range(full):
      used += np.bincount(chunk(c), minlength=len(self._parts))
    used += np.bincount(chunk(full)[:rest], minlength=len(self._parts))
    streams = [m._tf_train(base.derive_seed(seed, i), int(used[i]), p, count)
               .map(lambda ex, i=i: _tagged(ex, i)) for i, m in enumerate(self._parts)]
    return tf.data.Dataset.choose_from_datasets(streams, _chunked(chunk, start))

  def _tf_eval(self, split: str, p: int, count: int):
    ds = None
    for i, m in enumerate(self._parts):
      part = m._tf_eval(split, p, count).map(lambda ex, i=i: _tagged(ex, i))
      ds = part if ds is None else ds.concatenate(part)
    return ds


def _tagged(example: dict, i: int) -> dict:
  """A mixture member's example with its member index, and the keys every member must share."""
  return {**example, "dataset": tf.constant(i, tf.int32),
          UNREADABLE: example.get(UNREADABLE, tf.constant(""))}


def tfds_source(cfg) -> TfdsDataset:
  return TfdsDataset(base.parse_config(cfg, {
      "tfds_name": base.REQUIRED, "data_dir": None, "train_split": "train",
      "test_split": "test", "shuffle_buffer": 10_000}))


def folder_source(cfg) -> FolderDataset:
  return FolderDataset(base.parse_config(cfg, {
      "path": base.REQUIRED, "train_split": "train", "test_split": "test"}))
