"""On-device augmentation and normalisation: pure JAX, traced into the jitted train step.

Doing it here (not in the input pipeline) lets teacher(s) and student see the *same* augmented
view in one step, keeps the host pipeline trivial, and makes a step's view a pure function of
`jax.random.fold_in(seed_key, step)`, so a resumed run reproduces it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# ImageNet RGB statistics (torchvision / big_vision convention), used for every dataset so that
# teachers trained on different datasets expect the same input scale.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalize(images: jax.Array) -> jax.Array:
  """uint8 [..., 3] in 0..255 -> float32 (x/255 - MEAN) / STD."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(MEAN, jnp.float32)) / jnp.asarray(STD, jnp.float32)


def augment(images: jax.Array, key: jax.Array, *, pad: int, flip) -> jax.Array:
  """Per-sample random crop (after `pad` pixels of padding) and optional horizontal flip.

  Args:
    images: [b, H, W, C], uint8 or float; the result has the same shape and dtype.
    key: PRNG key; the same key gives the same views.
    pad: zero padding on each side (black for uint8); the crop offset is uniform in [0, 2*pad] per axis. 0 = no crop.
    flip: False, True (each sample flipped with probability 1/2) or a bool array [b] allowing
      flips per row (mixtures of datasets where only some should be flipped).
  """
  b, h, w, c = images.shape
  crop_key, flip_key = jax.random.split(key)
  if pad > 0:
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * pad + 1)
    images = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(
        padded, offsets)
  if flip is not False:
    do_flip = jax.random.bernoulli(flip_key, 0.5, (b,))
    if flip is not True:
      do_flip = jnp.logical_and(do_flip, jnp.asarray(flip, bool))
    images = jnp.where(do_flip[:, None, None, None], images[:, :, ::-1], images)
  return images


def fit(images: jax.Array, image_size: int) -> jax.Array:
  """Resizes a float batch [b, H, W, C] to image_size x image_size on device.

  For a frozen teacher whose resolution differs from the batch's (bilinear, antialiased when
  shrinking, like `preprocess`); identity when the size already matches.
  """
  b, h, w, c = images.shape
  if (h, w) == (image_size, image_size):
    return images
  return jax.image.resize(images, (b, image_size, image_size, c), method="linear", antialias=True)
