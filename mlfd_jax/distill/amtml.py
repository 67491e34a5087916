"""AMTML-KD (Liu, Zhang & Wang, Neurocomputing 2020): instance-level teacher weights + hints.

Each teacher k has a latent vector theta_k; with the adaptor W they weight the teachers per image:

  g(x)   = GlobalMaxPool(F_S_last(x))                       the student's last map, (B, C)
  mu(x)  = softmax_k((g(x) * theta_k) @ W)                  (B, K), sums to one per image
  q(x)   = sum_k mu_k(x) softmax(z_k(x) / T)                the integrated soft target
  L      = 2 alpha T^2 KL(q || softmax(z_S/T)) / R + (1 - alpha) CE(z_S, y)
         + w_hint sum_{l in hint_levels} sum_k MSE(n(R_lk(F_S^l)), n(F_k^l))     (multi-group hints)
         + w_rkd_dist RKD_d + w_rkd_angle RKD_a                 (on pooled features, optional)
         + l2 (|theta|^2 + |W|^2) / 2

R is the KL's reduction (`kd_reduction`): `mean` (default) is the official code's
`nn.KLDivLoss()`, whose element-wise mean divides the batch's KL by the number of classes too
(R = C); `batchmean` is the per-image mean (R = 1), 10x stronger at 10 classes. The official
CE reads the raw logits (LR_adaptive_Hint.ipynb; LR_adaptive_learning.ipynb softens them).
n(.) is L2 normalisation over channels at every position, R_lk a FitNet 1x1-conv regressor, and
teacher maps are resized to the student's grid. The official code's defaults: T = 5,
alpha = 0.7, l2 = 0.1; theta and W train with the student for the first `weight_phase` of the
steps and are then frozen exactly, optimizer updates included (`gate_updates`); the student
keeps training on the frozen weighting.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mlfd_jax.distill import losses
from mlfd_jax.distill.base import METHODS, Method, Reads, Source
from mlfd_jax.distill.teachers import check_levels, last_map, to_grid
from mlfd_jax.functional import linear_apply, linear_init

KD_REDUCTIONS = ("mean", "batchmean")


def teacher_weights(params, student_last_map):
  """mu(x): (B, K) instance-level teacher weights from the student's last map."""
  g = jnp.max(student_last_map.astype(jnp.float32), axis=(1, 2))         # (B, C)
  scores = jnp.einsum("bc,kc,c->bk", g, params["theta"], params["w"])    # (g * theta_k) @ W
  return jax.nn.softmax(scores, axis=-1)


@METHODS.register("amtml")
class AMTML(Method):
  name = "amtml"
  source = Source.TEACHERS
  needs_teacher_logits = True
  options_key = "amtml"
  OPTIONS = {"temperature": 5.0, "alpha": 0.7, "kd_reduction": "mean", "hint_levels": "stage3",
             "w_hint": 1.0, "w_rkd_dist": 0.0, "w_rkd_angle": 0.0, "l2": 0.1,
             "weight_phase": 0.5}

  def __init__(self, cfg, *, student_shapes, teacher_shapes, total_steps: int):
    super().__init__(cfg, student_shapes=student_shapes, teacher_shapes=teacher_shapes,
                     total_steps=total_steps)
    opts = cfg.options
    self.temperature, self.alpha = float(opts["temperature"]), float(opts["alpha"])
    self.w_hint, self.l2 = float(opts["w_hint"]), float(opts["l2"])
    self.w_rkd_dist, self.w_rkd_angle = float(opts["w_rkd_dist"]), float(opts["w_rkd_angle"])
    self.label_smoothing = cfg.label_smoothing
    self.weight_phase = float(opts["weight_phase"])
    self.kd_reduction = str(opts["kd_reduction"])
    if self.kd_reduction not in KD_REDUCTIONS:
      raise ValueError(f"distill.amtml.kd_reduction={self.kd_reduction!r}; valid: "
                       f"{', '.join(KD_REDUCTIONS)}")
    self.last = last_map(student_shapes)
    self.width = student_shapes[self.last][-1]
    self.hint_levels = check_levels(opts["hint_levels"], student_shapes, teacher_shapes,
                                    "distill.amtml.hint_levels")

  def reads(self):
    rkd = ("pooled",) if self.w_rkd_dist or self.w_rkd_angle else ()
    return Reads(logits=True, levels=(*self.hint_levels, *rkd))

  def init(self, key):
    k_theta, k_w, k_hint = jax.random.split(key, 3)
    k = len(self.teacher_shapes)
    hints = {}
    for level, lk in zip(self.hint_levels, jax.random.split(k_hint, max(len(self.hint_levels),
                                                                         1))):
      hints[level] = [linear_init(kk, self.student_shapes[level][-1], t[level][-1])
                      for kk, t in zip(jax.random.split(lk, k), self.teacher_shapes)]
    return {"theta": jax.random.normal(k_theta, (k, self.width), jnp.float32),
            "w": jax.random.normal(k_w, (self.width,), jnp.float32) / jnp.sqrt(self.width),
            "hints": hints}

  def _weighting_trains(self, step):
    """Whether theta and W still learn at `step` (always, outside training)."""
    if step is None:
      return True
    return step < int(self.weight_phase * self.total_steps)

  def _weighting(self, params, step):
    """theta and W, cut off from the gradient once the weighting phase is over."""
    weighting = {"theta": params["theta"], "w": params["w"]}
    training = self._weighting_trains(step)
    return jax.tree.map(lambda p: jnp.where(training, p, jax.lax.stop_gradient(p)), weighting)

  def gate_updates(self, updates, step):
    """Holds theta and W exactly after the weighting phase: no gradient reaches them then, and
    this also stops the optimizer's momentum and weight decay from moving them."""
    training = self._weighting_trains(step)
    return {**updates, **{k: jnp.where(training, updates[k], jnp.zeros_like(updates[k]))
                          for k in ("theta", "w")}}

  def loss(self, params, *, student, teacher, labels, step=None):
    z_s, f_s = student
    t = self.temperature
    weighting = self._weighting(params, step)
    mu = teacher_weights(weighting, f_s[self.last])
    probs = jnp.stack([jax.nn.softmax(z.astype(jnp.float32) / t) for z, _ in teacher], 1)
    target = jnp.einsum("bk,bkc->bc", mu, probs)
    kd = losses.kd_kl_to_probs(z_s, target, t)
    if self.kd_reduction == "mean":
      kd = kd / z_s.shape[-1]  # nn.KLDivLoss(): the mean over batch x classes
    terms = {"kd": kd,
             "ce": losses.cross_entropy(z_s, labels, self.label_smoothing)}
    total = 2 * self.alpha * terms["kd"] + (1 - self.alpha) * terms["ce"]
    hint_total = 0.0
    for level in self.hint_levels:
      for k, (_, f_t) in enumerate(teacher):
        s = losses.l2_normalize(linear_apply(params["hints"][level][k], f_s[level]), -1)
        tm = losses.l2_normalize(to_grid(f_t[level], f_s[level]), -1)
        terms[f"hint/{level}/t{k}"] = losses.mse(s, tm)
        hint_total = hint_total + terms[f"hint/{level}/t{k}"]
    terms["hint"] = hint_total
    total = total + self.w_hint * hint_total
    if self.w_rkd_dist or self.w_rkd_angle:
      terms["rkd_dist"] = sum(losses.rkd_distance(f_s["pooled"], f["pooled"]) for _, f in teacher)
      terms["rkd_angle"] = sum(losses.rkd_angle(f_s["pooled"], f["pooled"]) for _, f in teacher)
      total = total + self.w_rkd_dist * terms["rkd_dist"] + self.w_rkd_angle * terms["rkd_angle"]
    terms["l2"] = 0.5 * (jnp.sum(jnp.square(weighting["theta"])) +
                         jnp.sum(jnp.square(weighting["w"])))
    total = total + self.l2 * terms["l2"]
    for k in range(mu.shape[1]):
      terms[f"weight/t{k}"] = jnp.mean(mu[:, k])
    return total, terms
