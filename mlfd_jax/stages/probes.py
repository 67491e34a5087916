"""Linear probes: logits on a target dataset for a frozen teacher trained on another label space.

Methods that weight or average teacher predictions (`amtml`, `avg_kd`) need every teacher's
logits on the student's classes. In MLFD's setting a teacher was trained on another dataset, so
it gets a linear classifier on its frozen `pooled` features of the target dataset's training
images (un-augmented, the first `distill.probe_examples`), fitted by full-batch Adam. A teacher
whose dataset block equals the target's (the same-dataset setting) keeps its own head.

Probes are small and cheap; they are saved as `WORKDIR/probes/<target>/<teacher>.npz` (with the
probe's validation top-1) so that every method and rerun uses the same ones. Each file carries a
digest of the teacher's variables and the probe settings: a teacher retrained in the same workdir,
or other `probe_examples`/`probe_steps`, gets a fresh probe instead of a stale one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from mlfd_jax import fileio, parallel
from mlfd_jax.data import augment
from mlfd_jax.functional import linear_apply

DIRNAME = "probes"


def same_data(config, a: str, b: str) -> bool:
  """Whether datasets `a` and `b` are configured identically (so share one label space)."""
  if a == b:
    return True
  block = lambda n: {k: v for k, v in config.datasets[n].to_dict().items()  # noqa: E731
                     if k != "name"}
  return block(a) == block(b)


def pooled_features(fn, variables, size: int, dataset, split: str, limit: int, mesh,
                    batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """`pooled` features and labels of up to `limit` un-augmented examples of a split.

  Each process feeds its own rows of every batch; the outputs come back replicated, so every
  process gets the same whole arrays (and stops after the same batch)."""
  batch_size = max(batch_size // mesh.size, 1) * mesh.size

  @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
  def embed(v, batch):
    images = augment.fit(augment.normalize(batch["image"]), size)
    return fn.apply(v, images, train=False)[1]["pooled"], batch["label"], batch["mask"]

  feats, labels, n = [], [], 0
  for batch in dataset.eval_batches(split, batch_size, process_index=jax.process_index(),
                                    process_count=jax.process_count()):
    batch = parallel.to_global({k: batch[k] for k in ("image", "label", "mask")}, mesh)
    f, y, keep = (np.asarray(x.addressable_data(0)) for x in embed(variables, batch))
    keep = keep.astype(bool)
    feats.append(f.astype(np.float32)[keep])
    labels.append(y[keep])
    n += int(keep.sum())
    if n >= limit:
      break
  return np.concatenate(feats)[:limit], np.concatenate(labels)[:limit]


def fit_probe(x: np.ndarray, y: np.ndarray, num_classes: int, *, steps: int = 300,
              lr: float = 1e-2, weight_decay: float = 1e-4, seed: int = 0) -> dict:
  """Softmax regression on standardised-by-scale features, full-batch AdamW."""
  x = jnp.asarray(x, jnp.float32)
  y = jax.nn.one_hot(jnp.asarray(y), num_classes)
  scale = jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(x))), 1e-6)
  params = {"kernel": jnp.zeros((x.shape[1], num_classes), jnp.float32) +
            1e-3 * jax.random.normal(jax.random.key(seed), (x.shape[1], num_classes)),
            "bias": jnp.zeros((num_classes,), jnp.float32)}
  tx = optax.adamw(lr, weight_decay=weight_decay)

  def loss(p):
    return optax.softmax_cross_entropy(linear_apply(p, x / scale), y).mean()

  @jax.jit
  def step(p, s):
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  # Fold the feature scale into the kernel: the probe applies to raw pooled features.
  return {"kernel": np.asarray(params["kernel"] / scale), "bias": np.asarray(params["bias"])}


def probe_path(workdir: str, target: str, teacher: str) -> str:
  return fileio.join(workdir, DIRNAME, target, f"{teacher}.npz")


def variables_digest(variables) -> str:
  """A digest of a teacher's variables (computed once per teacher: it reads every weight)."""
  h = hashlib.sha1()
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    # A replicated global array's first local shard is the whole value, on every host.
    value = leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(np.asarray(value)).tobytes())
  return h.hexdigest()


def probe_key(teacher_digest: str, *, examples: int, steps: int) -> str:
  """What a saved probe must match: its teacher's `variables_digest` and the probe settings."""
  return hashlib.sha1(f"{teacher_digest} examples={examples} steps={steps}".encode()
                      ).hexdigest()[:16]


def load_saved(path: str, key: str, num_classes: int) -> dict | None:
  """The probe saved at `path` if it was fitted for this teacher and settings, else None."""
  if not fileio.exists(path):
    return None
  with fileio.path(path).open("rb") as fh, np.load(fh) as f:
    probe = {"kernel": f["kernel"], "bias": f["bias"]}
    meta = json.loads(str(f["meta"])) if "meta" in f else {}
  if meta.get("key") != key or probe["kernel"].shape[1] != num_classes:
    logging.info("[probe] %s was fitted for another teacher or settings: refitting", path)
    return None
  return probe


def load_or_fit(workdir: str, target: str, teacher: str, fn, variables, size: int, dataset,
                mesh, *, examples: int, steps: int, teacher_digest: str) -> dict:
  """Teacher `teacher`'s probe on dataset `target`: loaded if saved for these very teacher
  variables (`teacher_digest`) and settings, else fitted and saved."""
  path = probe_path(workdir, target, teacher)
  key = probe_key(teacher_digest, examples=examples, steps=steps)
  probe = load_saved(path, key, dataset.num_classes)
  if parallel.agree(probe is not None):
    if probe is None:
      raise FileNotFoundError(f"process {jax.process_index()} cannot read the probe {path} "
                              f"that process 0 found; is the workdir on a shared file system?")
    return {k: jnp.asarray(v) for k, v in probe.items()}
  x, y = pooled_features(fn, variables, size, dataset, "train", examples, mesh)
  probe = fit_probe(x, y, dataset.num_classes, steps=steps)
  vx, vy = pooled_features(fn, variables, size, dataset, "val", examples, mesh)
  val = float(np.mean(np.argmax(vx @ probe["kernel"] + probe["bias"], -1) == vy))
  logging.info("[probe] teacher of %s on %s: %d examples, val top1 %.4f -> %s", teacher, target,
               len(y), val, path)
  if jax.process_index() == 0:  # every process fitted the same probe; one writes it
    save(path, probe, val_top1=val,
         meta={"teacher": teacher, "target": target, "examples": len(y), "key": key})
  parallel.barrier(f"probe {path}")  # saved before any process looks for it again
  return {k: jnp.asarray(v) for k, v in probe.items()}


def save(path: str, probe: dict, *, val_top1: float, meta: dict) -> None:
  """Writes a probe atomically (a crash leaves the old file or none, never half of one)."""
  fileio.makedirs(os.path.dirname(path))
  fileio.savez_atomic(path, kernel=probe["kernel"], bias=probe["bias"], val_top1=val_top1,
                      meta=json.dumps(meta))
