"""Stage 3: one student per dataset, trained from scratch by distillation.

The student (default: its dataset's teacher architecture; `config.students.<dataset>` overrides)
and the frozen models it learns from run in the same jitted step on the same augmented batch.
What it learns from is the method's `source` (`config.distill.method`, distill/base.py): the
joint teacher (`mlfd`, `mlfd_last`, `kd`) or the stage-1 teachers themselves (`amtml`, `feed`,
`avg_kd`), whose logits on the student's classes come from linear probes (stages/probes.py).
Only the student and the method's adaptors train; the exported student is `params['student']`.

Each run (`distill.name`, default the method) has its own directory, `students/<dataset>` for
`mlfd` and `students_<run>/<dataset>` otherwise, and results key (`student`, `student_<run>`),
so all methods share one workdir's teachers and joint teacher. A method with several
generations (`feed_seq`) trains them in order in `.../gen<g>/<dataset>` (specs.student).
"""

from __future__ import annotations


from mlfd_jax.stages import common, specs

STAGE = "students"


def distillation_loss(student: specs.Student):
  """The method's loss on the student's and the frozen source's outputs for one batch."""

  def loss(params, model_state, frozen, batch, key):
    z_s, f_s, new_state = student.fn.apply(
        {"params": params["student"], "model_state": model_state["student"]}, batch["image"],
        train=True, key=key)
    total, terms = student.method.loss(params["method"], student=(z_s, f_s),
                                       teacher=student.teacher_out(frozen, batch),
                                       labels=batch["label"], step=batch.get("step"))
    terms["top1"] = (z_s.argmax(-1) == batch["label"]).mean()
    return total, ({"student": new_state}, terms)

  return loss


def method_gate(student: specs.Student):
  """The method's `gate_updates`, applied to the method's part of the params."""

  def gate(updates, step):
    return {**updates, "method": student.method.gate_updates(updates["method"], step)}

  return gate


def run(ctx) -> None:
  for spec in specs.students(ctx):
    common.train_and_report(ctx, spec, distillation_loss(spec.model), method_gate(spec.model))


