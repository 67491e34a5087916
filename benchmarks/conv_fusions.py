r"""Which of a training step's convolutions XLA:CPU hands to a library, under the current XLA_FLAGS.

  python -m benchmarks.conv_fusions
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=individual_convolution \
      python -m benchmarks.conv_fusions

Timing a flag on a busy 2-core host cannot tell a 10% change from noise (RESULTS.md). The
compiled program can: this compiles the gradient of the study's ResNet-18 (width 1/8, batch
128, 32 px) and prints a hash of the optimised program (two flags that leave it unchanged do
nothing), how many convolutions it has, how many of them sit inside a library fusion (YNNPACK,
XNNPACK, oneDNN) and how many library fusions it has in all.
"""

from __future__ import annotations

import argparse
import hashlib
import re

import jax
import jax.numpy as jnp

from mlfd_jax import modelfn

LIBRARIES = ("__ynn_fusion", "__xnn_fusion", "__onednn_fusion")
_CALL = re.compile(r"kind=kCustom, calls=%([\w.]+), backend_config=\{\"fusion_config\":"
                   r"\{\"kind\":\"(\w+)\"")


def census(hlo: str) -> dict:
  """Counts in an optimised HLO module's text: `convolutions` by where they run (`xla` or a
  library's fusion kind), `fusions` per library, and a hash of the program without its
  metadata (source locations). A fused computation is a block of the text that starts
  unindented with its name; a library fusion calls it by that name."""
  hlo = re.sub(r", metadata=\{[^}]*\}", "", hlo)
  library_of = {name: kind for name, kind in _CALL.findall(hlo) if kind in LIBRARIES}
  where: dict[str, int] = {}
  for block in re.split(r"\n(?=\S)", hlo):
    name = block.split(" ", 1)[0].lstrip("%")
    n = block.count(" convolution(")
    if n:
      key = library_of.get(name, "xla")
      where[key] = where.get(key, 0) + n
  fusions = {kind: list(library_of.values()).count(kind) for kind in LIBRARIES}
  return {"convolutions": where, "fusions": fusions,
          "program": hashlib.sha1(hlo.encode()).hexdigest()[:12]}


def training_step_hlo(width: float, batch: int, image_size: int) -> str:
  """The optimised HLO of one ResNet-18 gradient computation (forward and backward)."""
  fn = modelfn.from_config({"name": "resnet18", "width": width}, num_classes=10,
                           image_size=image_size)
  v = fn.init(jax.random.key(0))
  images = jnp.ones((batch, image_size, image_size, 3))

  def loss(params):
    logits = fn.apply({"params": params, "model_state": v["model_state"]}, images,
                      train=True, key=jax.random.key(1))[0]
    return logits.sum()

  return jax.jit(jax.grad(loss)).lower(v["params"]).compile().as_text()


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--width", type=float, default=0.125)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--image_size", type=int, default=32)
  args = parser.parse_args(argv)
  c = census(training_step_hlo(args.width, args.batch, args.image_size))
  convs = ", ".join(f"{k} {v}" for k, v in sorted(c["convolutions"].items()))
  fusions = ", ".join(f"{k.strip('_')} {v}" for k, v in c["fusions"].items())
  print(f"program {c['program']}: convolutions {sum(c['convolutions'].values())} ({convs}); "
        f"library fusions: {fusions}")


if __name__ == "__main__":
  main()
