"""Helpers for methods that distil from the stage-1 teachers themselves (`source = 'teachers'`).

Their `teacher` input is a list with one `(logits, feats)` per teacher, the logits on the
student's label space (the teacher's own head or a linear probe, stages/probes.py), and their
`teacher_shapes` a list with each teacher's `{level: shape}`.
"""

from __future__ import annotations

from mlfd_jax.functional import resize_map


def last_map(shapes: dict) -> str:
  """The deepest map level (`stage4` for every model family)."""
  maps = [level for level, s in shapes.items() if len(s) == 3]
  if not maps:
    raise ValueError(f"a model with no map level (levels: {', '.join(shapes)})")
  return maps[-1]


def check_levels(levels, student_shapes: dict, teacher_shapes: list[dict], key: str
                 ) -> tuple[str, ...]:
  """A comma string of map levels -> names that the student and every teacher emit as maps."""
  names = tuple(l.strip() for l in str(levels).split(",") if l.strip())
  for level in names:
    for who, shapes in [("student", student_shapes)] + [
        (f"teacher {k}", s) for k, s in enumerate(teacher_shapes)]:
      if level not in shapes or len(shapes[level]) != 3:
        maps = [l for l, s in shapes.items() if len(s) == 3]
        raise ValueError(f"{key} has {level!r}, which the {who} does not emit as a map; "
                         f"valid: {', '.join(maps)}")
  return names


def to_grid(teacher_map, student_map):
  """The teacher's map resized to the student's spatial grid."""
  return resize_map(teacher_map, student_map.shape[1:3])
