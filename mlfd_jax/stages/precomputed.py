"""Frozen models' outputs on every training image, computed once: what the students learn from
(`distill.precompute_targets`: the joint teacher's targets, the stage-1 teachers' outputs, or an
earlier generation's) and the teachers' fusion-level maps for the joint teacher
(`joint.precompute_teachers`).

The reference code's trade-off: the frozen part runs once over the un-augmented training images,
and each step reads its outputs by example index instead of running it again on that step's
augmented view. A student step then runs the student alone (a joint-teacher step, the fusion
layers alone), but what it learns from no longer sees the crop and flip its input got
(benchmarks/RESULTS.md measures both effects). Only in-memory datasets (npz, sklearn digits)
qualify: their training batches carry each row's `index`; a table that would not fit in memory
is refused up front.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from absl import logging

from mlfd_jax import parallel, train
from mlfd_jax.data import arrays, augment
from mlfd_jax.evaluation import eval_batch_size

MAX_BYTES = 4 * 2 ** 30  # a table above this is refused: it is held on every device


def table(outputs: Callable[[Any, jax.Array], Any], variables, dataset, mesh, train_cfg,
          what: str, key: str):
  """`outputs(variables, normalised images)` for every row of `dataset`'s train split, in row
  order, as arrays replicated on `mesh` (a pytree of [N, ...]), for the stage that trains under
  `train_cfg`; `key` is the config switch that asked for it (named in errors)."""
  if not isinstance(dataset, arrays.ArrayDataset):
    raise ValueError(f"{key} needs an in-memory dataset (npz or sklearn_digits); "
                     f"{dataset.name!r} streams through tf.data; set --config.{key}=False")
  n = dataset.num_examples("train")
  seen = train.num_steps(train_cfg, n) * int(train_cfg.batch_size)
  warn_if_slower(n, seen, what=what, key=key, name=dataset.name)
  batch_size = eval_batch_size(train_cfg)
  per_example = jax.eval_shape(outputs, variables, jax.ShapeDtypeStruct(
      (1, dataset.image_size, dataset.image_size, 3), np.float32))
  size = n * sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(per_example))
  if size > MAX_BYTES:
    raise ValueError(f"{key}: {what} on the {n} training images of {dataset.name!r} would "
                     f"take {size / 2 ** 30:.1f} GiB on every device (at most "
                     f"{MAX_BYTES / 2 ** 30:.0f}); set --config.{key}=False")
  repl = parallel.replicated(mesh)
  run = jax.jit(lambda v, images: outputs(v, augment.normalize(images)),
                in_shardings=(repl, parallel.data_sharding(mesh)), out_shardings=repl)
  parts = []
  for batch in dataset.eval_batches("train", batch_size, process_index=jax.process_index(),
                                    process_count=jax.process_count()):
    images = parallel.to_global({"image": batch["image"]}, mesh)["image"]
    parts.append(jax.device_get(run(variables, images)))
  rows = jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *parts)
  return jax.device_put(rows, repl)


def warn_if_slower(n: int, seen: int, *, what: str, key: str, name: str) -> None:
  """Precomputing runs the frozen part once per training image; running it live, once per
  image a step takes. Under one epoch the switch costs more forward passes than it saves
  (configs/shared_trio.py's students take 25,600 of MNIST's 54,000 images): say so."""
  if seen < n:
    logging.warning("%s: %s are computed for all %d training images of %s, but the stage's "
                    "steps take only %d (%.2f epochs), so this is slower than running them "
                    "live; set --config.%s=False unless you want its accuracy effect", key, what,
                    n, name, seen, seen / n, key)


def gather(rows, index: jax.Array):
  """The table's rows of a batch (`index`: each example's position in the train split)."""
  return jax.tree.map(lambda x: x[index], rows)
