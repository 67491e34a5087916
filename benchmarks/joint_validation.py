"""Seconds per validation of a joint teacher (random teachers, configs/tiny_imagenet_subsets.py)
with the whole model run on every validation (`live`) and with the frozen teachers' maps of
each split kept after the first one (`cached`, what training now does; evaluation.FrozenInputs).

  python -m benchmarks.joint_validation [FUSION_LEVEL] [--data_root DIR]
"""

import argparse
import time

import jax

from configs import tiny_imagenet_subsets
from mlfd_jax import parallel
from mlfd_jax.evaluation import Evaluator
from mlfd_jax.stages import specs
from mlfd_jax.stages.context import RunContext


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("fusion_level", nargs="?", default="stage3")
  p.add_argument("--data_root", default="../shared/data")
  p.add_argument("--repeats", type=int, default=4)
  args = p.parse_args(argv)
  c = tiny_imagenet_subsets.get_config()
  c.data_root, c.joint.fusion_level = args.data_root, args.fusion_level
  ctx = RunContext(c, "")
  for i, spec in enumerate(specs.teachers(ctx)):
    ctx.frozen.put(spec, spec.init(jax.random.key(i)))
  spec = specs.joints(ctx)[0]
  model = spec.init(jax.random.key(7))
  mesh = parallel.make_mesh(jax.device_count())
  batch = int(c.joint_train.batch_size)
  for name, inputs in (("live", None), ("cached", spec.frozen_inputs)):
    ev = Evaluator(spec.predict, spec.frozen(), mesh, batch, frozen_inputs=inputs)
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      top1 = ev.validate(model, spec.eval_sets)["val_top1"]
      times.append(time.perf_counter() - start)
    print(f"{name:6s} {args.fusion_level}: " + " ".join(f"{t:.2f}s" for t in times)
          + f"  (val_top1 {top1:.4f}; the first includes compiling)")


if __name__ == "__main__":
  main()
