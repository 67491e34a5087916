"""FEED (Park & Kwak, "FEED: Feature-level Ensemble for Knowledge Distillation").

Parallel FEED (`feed`): one non-linear transformation NTL_n (three 3x3 convs, ReLU between) per
teacher on the student's last map, each trained to match its teacher's last map:

  L = CE(z_S, y) + beta * sum_n L1(x_n / |x_n|_2, NTL_n(x_S) / |NTL_n(x_S)|_2)

with the L2 normalisation per sample over the whole map and L1 the mean absolute difference
(PyTorch's `L1Loss()`); teacher maps are resized to the student's grid. The transformations are
method parameters: they train with the student and are not part of the exported student.

Sequential FEED (`feed_seq`): the same loss over `distill.feed.generations` generations;
generation 0 learns from the stage-1 teachers, every later one from the previous generation's
student alone (`generations`; stages/specs.py chains them, stages/students.py trains them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mlfd_jax.distill import losses
from mlfd_jax.distill.base import METHODS, Method, Reads, Source
from mlfd_jax.distill.teachers import last_map, to_grid


def conv3x3_init(key, cin: int, cout: int):
  kernel = jax.random.normal(key, (3, 3, cin, cout), jnp.float32) / jnp.sqrt(9 * cin)
  return {"kernel": kernel, "bias": jnp.zeros((cout,), jnp.float32)}


def conv3x3(p, x):
  y = jax.lax.conv_general_dilated(x.astype(jnp.float32), p["kernel"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + p["bias"]


def transform(layers, x):
  """NTL: conv3x3 - ReLU - conv3x3 - ReLU - conv3x3."""
  for i, p in enumerate(layers):
    x = conv3x3(p, x)
    if i < len(layers) - 1:
      x = jax.nn.relu(x)
  return x


def feed_term(student_map, teacher_map):
  """L1 between the per-sample L2-normalised maps (mean over elements)."""
  b = student_map.shape[0]
  s = losses.l2_normalize(student_map.reshape(b, -1), -1)
  t = losses.l2_normalize(teacher_map.reshape(b, -1), -1)
  return jnp.mean(jnp.abs(s - t))


@METHODS.register("feed")
class FEED(Method):
  name = "feed"
  source = Source.TEACHERS
  needs_teacher_logits = False  # feature matching and CE only: no probes
  options_key = "feed"
  OPTIONS = {"beta": 100.0, "generations": 2}  # the FEED code's beta; feed_seq's generations

  def __init__(self, cfg, *, student_shapes, teacher_shapes, total_steps: int):
    super().__init__(cfg, student_shapes=student_shapes, teacher_shapes=teacher_shapes,
                     total_steps=total_steps)
    self.beta = float(cfg.options["beta"])
    self.label_smoothing = cfg.label_smoothing
    self.level = last_map(student_shapes)
    self.cin = student_shapes[self.level][-1]
    self.teacher_levels = [last_map(t) for t in teacher_shapes]
    self.couts = [t[l][-1] for t, l in zip(teacher_shapes, self.teacher_levels)]

  def reads(self):
    return Reads(logits=False, levels=tuple(dict.fromkeys(self.teacher_levels)))

  def init(self, key):
    out = []
    for k, cout in zip(jax.random.split(key, len(self.couts)), self.couts):
      k1, k2, k3 = jax.random.split(k, 3)
      out.append([conv3x3_init(k1, self.cin, cout), conv3x3_init(k2, cout, cout),
                  conv3x3_init(k3, cout, cout)])
    return {"transforms": out}

  def loss(self, params, *, student, teacher, labels, step=None):
    del step
    z_s, f_s = student
    terms = {"ce": losses.cross_entropy(z_s, labels, self.label_smoothing)}
    feed_total = 0.0
    for n, ((_, f_t), level) in enumerate(zip(teacher, self.teacher_levels)):
      x_s = transform(params["transforms"][n], f_s[self.level])
      terms[f"feed/t{n}"] = feed_term(x_s, to_grid(f_t[level], x_s))
      feed_total = feed_total + terms[f"feed/t{n}"]
    terms["feed"] = feed_total
    return terms["ce"] + self.beta * feed_total, terms


@METHODS.register("feed_seq")
class SequentialFEED(FEED):
  name = "feed_seq"

  @classmethod
  def generations(cls, options):
    generations = int(options["generations"])
    if generations < 1:
      raise ValueError(f"distill.feed.generations={generations} must be >= 1")
    return generations
