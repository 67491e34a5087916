"""Evaluating a joint teacher computes its frozen teachers' maps of a split once and reuses them
at every later validation, with the same accuracies as running the whole model each time."""

import dataclasses

import jax

from mlfd_jax import parallel
from mlfd_jax.evaluation import Evaluator
from mlfd_jax.stages import specs
from mlfd_jax.stages.context import RunContext


def _joint(config):
  ctx = RunContext(config, "")
  for i, spec in enumerate(specs.teachers(ctx)):
    ctx.frozen.put(spec, spec.init(jax.random.key(i)))
  spec = specs.joints(ctx)[0]
  return spec, spec.init(jax.random.key(7))


def _counting(frozen_inputs, calls):
  """The same split, with a host callback that counts each run of the frozen part."""

  def compute(frozen, images):
    jax.debug.callback(lambda: calls.append(1))
    return frozen_inputs.compute(frozen, images)

  return dataclasses.replace(frozen_inputs, compute=compute)


def test_frozen_part_runs_once_per_split_and_gives_the_live_accuracies(digits_config):
  spec, model = _joint(digits_config)
  assert spec.frozen_inputs is not None  # frozen teachers: their maps can be kept
  mesh = parallel.make_mesh(jax.device_count())
  live = Evaluator(spec.predict, spec.frozen(), mesh, 32)
  calls = []
  cached = Evaluator(spec.predict, spec.frozen(), mesh, 32,
                     frozen_inputs=_counting(spec.frozen_inputs, calls))
  uncached_calls = []
  uncached = Evaluator(spec.predict, spec.frozen(), mesh, 32, cache_bytes=0,
                       frozen_inputs=_counting(spec.frozen_inputs, uncached_calls))
  es = spec.eval_sets[1]  # a second head: the cached path must pass the head through
  batches = -(-es.dataset.num_examples("val") // 32)
  want = {split: live.evaluate(model, es, split) for split in ("val", "test")}
  for _ in range(3):  # three validations
    assert cached.evaluate(model, es, "val") == want["val"]
    assert uncached.evaluate(model, es, "val") == want["val"]
  jax.effects_barrier()
  assert len(calls) == batches  # once per batch of the split, not once per validation
  assert len(uncached_calls) == 3 * batches  # no room to keep them: run every time
  assert cached.evaluate(model, es, "test") == want["test"]  # another split: its own entry
  assert len(calls) == batches + -(-es.dataset.num_examples("test") // 32)


def test_fine_tuned_teachers_are_not_cached(digits_config):
  digits_config.joint.finetune_teachers = True
  spec, _ = _joint(digits_config)
  assert spec.frozen_inputs is None  # they change as the joint teacher trains
