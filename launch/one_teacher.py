r"""Train one stage-1 teacher of configs/tiny_imagenet_subsets.py (tin3_0, seed 0) alone, to see
how far the machine's arithmetic moves a result: run it under other XLA_FLAGS or core counts
and compare results.json (docs/results.md, "Repeatability").

  python launch/one_teacher.py runs/det/default
  XLA_FLAGS=--xla_cpu_max_isa=AVX2 python launch/one_teacher.py runs/det/avx2
  taskset -c 0 python launch/one_teacher.py runs/det/onecore

Run from the repository root; DATA_ROOT (default ../shared/data) moves the data file.
"""

import os
import sys

sys.path.insert(0, os.getcwd())

from configs import tiny_imagenet_subsets  # noqa: E402
from mlfd_jax import main as mlfd_main  # noqa: E402


def main(workdir: str, keep: str = "tin3_0") -> None:
  c = tiny_imagenet_subsets.get_config()
  c.data_root = os.environ.get("DATA_ROOT", "../shared/data")
  c.stage = "teachers"
  for name in [n for n in c.datasets.keys() if n != keep]:
    del c.datasets[name], c.teachers[name], c.students[name]
  mlfd_main.run(c, workdir, "configs/tiny_imagenet_subsets.py")


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit("usage: python launch/one_teacher.py WORKDIR")
  main(sys.argv[1])
