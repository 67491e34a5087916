"""mlfd_jax.data: splits, subsets, determinism, padding, errors, mixes, augment, tf.data."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from mlfd_jax import data
from mlfd_jax.data import augment
from mlfd_jax.data import preprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]

SHARED_DIGITS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                             "sklearn_digits_8.npz")


def _id_images(ids, size=6):
  """uint8 [n,size,size,1] images whose first two pixels encode each id (identity check)."""
  x = np.zeros((len(ids), size, size, 1), np.uint8)
  x[:, 0, 0, 0], x[:, 0, 1, 0] = np.asarray(ids) // 256, np.asarray(ids) % 256
  return x


def _ids(images):
  return images[:, 0, 0, 0].astype(int) * 256 + images[:, 0, 1, 0].astype(int)


def _write_npz(path, n_train=200, n_test=50, num_classes=10, **override):
  arrs = {"x_train": _id_images(np.arange(n_train)),
          "y_train": (np.arange(n_train) % num_classes).astype(np.int32),
          "x_test": _id_images(np.arange(10_000, 10_000 + n_test)),
          "y_test": (np.arange(n_test) % num_classes).astype(np.int32)}
  arrs.update(override)
  np.savez(path, **{k: v for k, v in arrs.items() if v is not None})
  return str(path)


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory):
  return _write_npz(tmp_path_factory.mktemp("npz") / "ids.npz")


def _npz(path, **kw):
  # image_size 6 = native size, so pixels (and the ids they encode) survive preprocessing.
  return data.build_dataset({"name": "ids", "source": "npz", "path": path, "image_size": 6, **kw})


@pytest.fixture(scope="module")
def digits():
  return data.build_dataset({"name": "digits", "source": "sklearn_digits", "image_size": 16})


# --- sources, splits, config ----------------------------------------------------------------------

def test_sklearn_digits_shapes_and_split_sizes(digits):
  assert (digits.num_classes, digits.image_size) == (10, 16)
  assert digits.num_examples("train") + digits.num_examples("val") == 1437
  assert abs(digits.num_examples("val") - 144) <= 5 and digits.num_examples("test") == 360
  batch = next(digits.train_batches(32, seed=0))
  assert batch["image"].shape == (32, 16, 16, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
  assert np.array_equal(batch["image"][..., 0], batch["image"][..., 2])  # Gray repeated.


@pytest.mark.skipif(not os.path.exists(SHARED_DIGITS), reason="no shared data")
def test_sklearn_digits_matches_shared_npz():
  native = data.build_dataset({"name": "d", "source": "sklearn_digits", "image_size": 8})
  ref = np.load(SHARED_DIGITS)
  assert np.array_equal(native.arrays("test")["image"][..., 0], ref["x_test"][..., 0])
  assert np.array_equal(native.arrays("test")["label"], ref["y_test"])


def test_sklearn_digits_read_without_importing_sklearn_equal_load_digits():
  code = ("import sys; from mlfd_jax.data import arrays; x, y = arrays.sklearn_digits_arrays(); "
          "assert 'sklearn' not in sys.modules; import numpy as np; "
          "from sklearn import datasets; d = datasets.load_digits(); "
          "assert np.array_equal(x, d.images) and np.array_equal(y, d.target), 'differ'")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]


def test_val_carve_disjoint_and_fixed_by_split_seed(npz_path):
  ds = _npz(npz_path, val_fraction=0.2)
  train, val = set(_ids(ds.arrays("train")["image"])), set(_ids(ds.arrays("val")["image"]))
  assert len(val) == 40 and not train & val and train | val == set(range(200))
  assert np.array_equal(_ids(_npz(npz_path, val_fraction=0.2).arrays("val")["image"]),
                        _ids(ds.arrays("val")["image"]))
  other = set(_ids(_npz(npz_path, val_fraction=0.2, split_seed=1).arrays("val")["image"]))
  assert other != val
  for seed in (0, 1, 2):  # Training seeds draw from the same train part, never from val.
    it = ds.train_batches(40, seed=seed)
    assert set(np.concatenate([_ids(next(it)["image"]) for _ in range(8)])) == train


def test_config_errors(npz_path):
  with pytest.raises(ValueError, match="'val_fration'"):
    _npz(npz_path, val_fration=0.1)
  with pytest.raises(ValueError, match="valid: .*npz.*sklearn_digits"):
    data.build_dataset({"name": "x", "source": "nope", "image_size": 8})
  with pytest.raises(ValueError, match="'image_size'"):
    data.build_dataset({"name": "x", "source": "sklearn_digits"})


def test_npz_errors_are_one_line_and_name_the_cause(tmp_path):
  missing = str(tmp_path / "absent.npz")
  with pytest.raises(FileNotFoundError, match="absent.npz") as e:
    _npz(missing)
  no_key = _write_npz(tmp_path / "nokey.npz", y_test=None)
  with pytest.raises(ValueError, match="nokey.npz.*'y_test'") as e2:
    _npz(no_key)
  bad = _write_npz(tmp_path / "bad.npz", y_test=np.array([0, 1, 12] + [0] * 47, np.int32))
  with pytest.raises(ValueError, match=r"bad.npz.*label 12 ") as e3:
    _npz(bad, num_classes=10)
  neg = _write_npz(tmp_path / "neg.npz", y_train=-np.ones(200, np.int32))
  with pytest.raises(ValueError, match=r"neg.npz.*label -1 "):
    _npz(neg)
  for err in (e, e2, e3):
    assert "\n" not in str(err.value)


def test_npz_round_trip_and_num_classes(tmp_path):
  path = _write_npz(tmp_path / "rt.npz", num_classes=7)
  ds = _npz(path, val_fraction=0.0)
  assert ds.num_classes == 7 and ds.num_examples("val") == 0
  assert np.array_equal(_ids(ds.arrays("train")["image"]), np.arange(200))
  assert np.array_equal(ds.arrays("test")["label"], np.arange(50) % 7)
  assert _npz(path, num_classes=12).num_classes == 12


# --- class subsets ------------------------------------------------------------------------------

def test_class_subsets_sizes():
  assert data.class_subsets(10, 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
  groups = data.class_subsets(100, 7)
  assert sorted(sum(groups, [])) == list(range(100))
  assert max(map(len, groups)) - min(map(len, groups)) <= 1
  with pytest.raises(ValueError):
    data.class_subsets(3, 4)


def test_classes_relabel_in_listed_order_and_subsets_disjoint(npz_path):
  ds = _npz(npz_path, classes=[7, 2, 5])
  for split in ("train", "val", "test"):
    arrs = ds.arrays(split)
    original = _ids(arrs["image"]) % 10  # Labels of the fixture are id % 10.
    assert set(original) == {7, 2, 5}
    lut = np.full(10, -1)
    lut[[7, 2, 5]] = [0, 1, 2]
    assert np.array_equal(arrs["label"], lut[original])
  assert ds.num_classes == 3
  seen = [set(_ids(_npz(npz_path, classes=g).arrays("train")["image"]))
          for g in data.class_subsets(10, 3)]
  assert all(not a & b for i, a in enumerate(seen) for b in seen[i + 1:])


# --- determinism, sharding, eval padding -------------------------------------------------------

def test_resume_and_process_slices(npz_path):
  ds = _npz(npz_path)
  it = ds.train_batches(24, seed=5)
  fresh = [next(it) for _ in range(12)]
  for s in (0, 7, 11):  # 24 * 7 crosses an epoch boundary (180 train examples).
    resumed = next(ds.train_batches(24, seed=5, start_step=s))
    assert all(np.array_equal(resumed[k], fresh[s][k]) for k in fresh[s])
  assert not np.array_equal(next(ds.train_batches(24, seed=6))["image"], fresh[0]["image"])
  parts = [next(ds.train_batches(24, seed=5, start_step=3, process_index=p, process_count=2))
           for p in (0, 1)]
  assert parts[0]["image"].shape[0] == 12
  assert np.array_equal(np.concatenate([p["image"] for p in parts]), fresh[3]["image"])
  # One epoch (180 = 7.5 batches of 24) visits every train example exactly once.
  epoch = np.concatenate([_ids(b["image"]) for b in fresh])[:180]
  assert sorted(epoch) == sorted(_ids(ds.arrays("train")["image"]))


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_pad_and_cover_once(npz_path, process_count):
  ds = _npz(npz_path)
  n = ds.num_examples("test")  # 50 with global batch 16: 4 batches, the last one padded.
  ids = []
  for p in range(process_count):
    batches = list(ds.eval_batches("test", 16, process_index=p, process_count=process_count))
    assert len(batches) == 4 and all(b["image"].shape[0] == 16 // process_count for b in batches)
    for b in batches:
      ids += list(_ids(b["image"][b["mask"]]))
      assert not b["image"][~b["mask"]].any()
  assert len(ids) == n and sorted(ids) == sorted(_ids(ds.arrays("test")["image"]))


# --- mixtures -----------------------------------------------------------------------------------

def test_mix_ids_labels_proportions_and_resume(npz_path, digits):
  small = _npz(npz_path, classes=[0, 1, 2])  # 54 train examples vs 1294 digits.
  mixed = data.mix([digits, small])
  assert mixed.num_classes == (10, 3) and mixed.image_size == 16
  it = mixed.train_batches(64, seed=0)
  batches = [next(it) for _ in range(40)]
  ids = np.concatenate([b["dataset"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  assert set(ids) == {0, 1} and batches[0]["image"].shape == (64, 16, 16, 3)
  assert labels[ids == 0].max() < 10 and labels[ids == 1].max() < 3
  share = (ids == 1).mean()
  assert abs(share - 54 / (54 + 1294)) < 0.02
  resumed = next(mixed.train_batches(64, seed=0, start_step=9))
  assert all(np.array_equal(resumed[k], batches[9][k]) for k in resumed)
  evals = list(mixed.eval_batches("test", 100))
  counts = np.bincount(np.concatenate([b["dataset"][b["mask"]] for b in evals]))
  assert list(counts) == [360, small.num_examples("test")]


# --- preprocessing and augmentation -------------------------------------------------------------

def test_preprocess_numpy_and_tf_agree():
  tf = pytest.importorskip("tensorflow")
  rng = np.random.default_rng(0)
  for shape in [(2, 28, 28, 1), (2, 40, 24, 3), (2, 9, 12, 4)]:
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    ours = preprocess.fit_numpy(x, 16)
    assert ours.shape == (2, 16, 16, 3)
    theirs = np.stack([preprocess.fit_tf(tf.constant(im), 16).numpy() for im in x])
    assert np.abs(ours.astype(int) - theirs).max() <= 1
  gray = preprocess.fit_numpy(rng.integers(0, 256, (1, 8, 8, 1), dtype=np.uint8), 8)
  assert np.array_equal(gray[..., 0], gray[..., 1])


def _images(b=64, size=8):
  return jax.numpy.asarray(np.random.default_rng(1).integers(1, 256, (b, size, size, 3)),
                           jax.numpy.uint8)


def test_augment_deterministic_and_crop_is_a_window():
  x, pad = _images(), 2
  key = jax.random.key(0)
  out = augment.augment(x, key, pad=pad, flip=True)
  assert out.shape == x.shape and out.dtype == x.dtype
  assert np.array_equal(out, augment.augment(x, key, pad=pad, flip=True))
  assert not np.array_equal(out, augment.augment(x, jax.random.key(1), pad=pad, flip=True))
  crops = np.asarray(augment.augment(x, key, pad=pad, flip=False))
  padded = np.pad(np.asarray(x), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = set()
  for i in range(len(x)):
    hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
            if np.array_equal(crops[i], padded[i, dy:dy + 8, dx:dx + 8])]
    assert hits
    offsets.add(hits[0])
  assert len(offsets) > 5  # Offsets vary per sample.


def test_augment_flip_control():
  x = _images()
  for seed in range(3):
    assert np.array_equal(augment.augment(x, jax.random.key(seed), pad=0, flip=False), x)
  out = np.asarray(augment.augment(x, jax.random.key(0), pad=0, flip=True))
  flipped = np.array([np.array_equal(o, np.asarray(i)[:, ::-1]) for o, i in zip(out, x)])
  same = np.array([np.array_equal(o, i) for o, i in zip(out, x)])
  assert (flipped | same).all() and 10 < flipped.sum() < 54
  allow = np.arange(64) % 2 == 0
  out = np.asarray(augment.augment(x, jax.random.key(0), pad=0, flip=allow))
  assert np.array_equal(out[~allow], np.asarray(x)[~allow])


def test_normalize_and_fit():
  mean_pixel = np.round(np.array(augment.MEAN) * 255).astype(np.uint8)[None, None, None]
  assert np.abs(augment.normalize(mean_pixel)).max() < 0.01
  assert augment.normalize(mean_pixel).dtype == np.float32
  y = augment.fit(jax.numpy.ones((2, 8, 8, 3)), 12)
  assert y.shape == (2, 12, 12, 3) and np.allclose(y, 1.0)


# --- tf.data backends ---------------------------------------------------------------------------

def test_tfds_mock_mnist(npz_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=40):
    cfg = {"name": "m", "source": "tfds", "tfds_name": "mnist", "image_size": 32,
           "shuffle_buffer": 8}
    ds = data.build_dataset(cfg)
    assert ds.num_classes == 10
    it = ds.train_batches(8, seed=1)
    batches = [next(it) for _ in range(8)]  # 40 examples: crosses into the second epoch.
    assert batches[0]["image"].shape == (8, 32, 32, 3) and batches[0]["image"].dtype == np.uint8
    assert batches[0]["label"].dtype == np.int32
    resumed = next(ds.train_batches(8, seed=1, start_step=6))
    assert all(np.array_equal(resumed[k], batches[6][k]) for k in resumed)
    for split in ("val", "test"):
      evals = list(ds.eval_batches(split, 16))
      assert all(b["image"].shape == (16, 32, 32, 3) for b in evals)
      assert sum(b["mask"].sum() for b in evals) == ds.num_examples(split)
    sub = data.build_dataset({**cfg, "classes": [3, 5]})
    labels = np.concatenate([b["label"] for b in sub.eval_batches("test", 8)])
    all_labels = np.concatenate([b["label"][b["mask"]] for b in ds.eval_batches("test", 8)])
    assert sub.num_classes == 2 and sub.num_examples("test") == np.isin(all_labels, [3, 5]).sum()
    assert set(np.unique(labels)) <= {0, 1}
    # A tf.data mixture (any backend): ids, label ranges, proportions, resume, eval coverage.
    mixed = data.mix([ds, _npz(npz_path)])  # 36 vs 180 train examples.
    assert mixed.image_size == 32 and mixed.num_classes == (10, 10)
    it = mixed.train_batches(16, seed=2)
    batches = [next(it) for _ in range(12)]
    ids = np.concatenate([b["dataset"] for b in batches])
    assert set(ids) == {0, 1} and abs((ids == 0).mean() - 36 / 216) < 0.07
    resumed = next(mixed.train_batches(16, seed=2, start_step=10))
    assert all(np.array_equal(resumed[k], batches[10][k]) for k in resumed)
    evals = list(mixed.eval_batches("test", 32))
    assert sum(b["mask"].sum() for b in evals) == 40 + 50


def test_folder_labels_from_sorted_class_names(tmp_path):
  pil = pytest.importorskip("PIL.Image")
  colours = {"zebra": 200, "ant": 10, "mole": 100}  # Sorted: ant=0, mole=1, zebra=2.
  for split, n in (("train", 5), ("test", 2)):
    for name, value in colours.items():
      os.makedirs(tmp_path / split / name)
      for i in range(n):
        mode = "L" if name == "mole" else "RGB"  # A grayscale class: 1 channel -> 3.
        shape = (6, 10) if mode == "L" else (6, 10, 3)
        image = pil.fromarray(np.full(shape, value, np.uint8), mode)
        image.save(tmp_path / split / name / f"{i}.png")
  cfg = {"name": "f", "source": "folder", "path": str(tmp_path), "image_size": 4,
         "val_fraction": 0.2}
  ds = data.build_dataset(cfg)
  assert ds.class_names == ["ant", "mole", "zebra"] and ds.num_examples("val") == 3
  for batch in [next(ds.train_batches(6, seed=0)), *ds.eval_batches("test", 4)]:
    assert batch["image"].shape[1:] == (4, 4, 3)
    expected = np.array([10, 100, 200])[batch["label"]]
    rows = batch.get("mask", np.ones(len(expected), bool))
    assert np.array_equal(batch["image"][rows, 2, 2, 1], expected[rows])
  with pytest.raises(FileNotFoundError, match="nowhere"):
    data.build_dataset({**cfg, "path": str(tmp_path / "nowhere")})


def test_tfds_val_carve_composes_percent_slices():
  from mlfd_jax.data import streaming
  assert streaming.carve_val_split("train", 0.1) == ("train[0%:90%]", "train[90%:100%]")
  assert streaming.carve_val_split("train[:80%]", 0.1) == ("train[0%:72%]", "train[72%:80%]")
  assert streaming.carve_val_split("train[:80%]", 0.0) == ("train[:80%]", None)
  with pytest.raises(ValueError, match="train\\[:100\\]"):
    streaming.carve_val_split("train[:100]", 0.1)
