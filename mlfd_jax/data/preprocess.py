"""THE one place where images are brought to a model's resolution and to 3 channels.

Every backend calls `fit_numpy` (in-memory arrays, once at load time, never per batch) or `fit_tf`
(tf.data streams, per decoded image); both have the same semantics, so a dataset gives the same
pixels whichever backend reads it:

1. Channels: 1 (grayscale) -> repeated to 3; 2 (gray + alpha) -> gray repeated; 3 -> kept;
   4 (RGBA) -> alpha dropped.
2. Size: if the image is not already image_size x image_size, resize (bilinear, antialiased when
   shrinking, half-pixel centres) so that the *shorter* side equals image_size, keeping the aspect
   ratio, then take the centre image_size x image_size crop. For square sources (all the npz
   files) this is a plain resize.
3. Pixels stay uint8 (rounded, clipped): normalisation happens on device (`augment.normalize`).

Random crops/flips are not here: they run on device inside the jitted step (`augment.py`), where
teacher and student see the same view.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_CHUNK = 1024  # Images resized per jitted call; bounds host memory for large arrays.


def resized_shape(h: int, w: int, image_size: int) -> tuple[int, int]:
  """Size after scaling the shorter side to image_size (round half up, integer maths)."""
  short = min(h, w)
  return (h * image_size + short // 2) // short, (w * image_size + short // 2) // short


def to_rgb_numpy(images: np.ndarray) -> np.ndarray:
  """[N,H,W,C] with C in 1..4 -> [N,H,W,3] (see module docstring)."""
  if images.ndim == 3:  # [N,H,W] grayscale without a channel axis.
    images = images[..., None]
  c = images.shape[-1]
  if c in (1, 2):
    return np.repeat(images[..., :1], 3, axis=-1)
  if c in (3, 4):
    return images[..., :3]
  raise ValueError(f"images must have 1-4 channels, got shape {images.shape}")


@functools.partial(jax.jit, static_argnums=(1, 2))
def _resize_crop(chunk, size_hw, image_size):
  x = jax.image.resize(chunk.astype(jnp.float32), (chunk.shape[0], *size_hw, chunk.shape[-1]),
                       method="linear", antialias=True)
  top, left = (size_hw[0] - image_size) // 2, (size_hw[1] - image_size) // 2
  x = x[:, top:top + image_size, left:left + image_size]
  return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


def fit_numpy(images: np.ndarray, image_size: int) -> np.ndarray:
  """uint8 [N,H,W,C] -> uint8 [N,S,S,3]; a no-op copy-free path when already S x S x 3."""
  images = to_rgb_numpy(np.asarray(images))
  n, h, w, _ = images.shape
  if (h, w) == (image_size, image_size):
    return images
  size_hw = resized_shape(h, w, image_size)
  out = np.empty((n, image_size, image_size, 3), np.uint8)
  for i in range(0, n, _CHUNK):
    out[i:i + _CHUNK] = np.asarray(_resize_crop(images[i:i + _CHUNK], size_hw, image_size))
  return out


def fit_tf(image, image_size: int):
  """tf.data version of `fit_numpy` for one decoded image: uint8 [H,W,C] -> uint8 [S,S,3]."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # Streaming only.

  c = tf.shape(image)[-1]
  image = tf.cond(c < 3, lambda: tf.repeat(image[..., :1], 3, axis=-1), lambda: image[..., :3])
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  short = tf.minimum(h, w)
  nh = (h * image_size + short // 2) // short
  nw = (w * image_size + short // 2) // short

  def resize():
    x = tf.image.resize(tf.cast(image, tf.float32), [nh, nw], method="bilinear", antialias=True)
    top, left = (nh - image_size) // 2, (nw - image_size) // 2
    x = x[top:top + image_size, left:left + image_size]
    return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)

  same = tf.logical_and(tf.equal(h, image_size), tf.equal(w, image_size))
  image = tf.cond(same, lambda: image, resize)
  return tf.ensure_shape(image, [image_size, image_size, 3])
