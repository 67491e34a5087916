"""How sure trained teachers and students are on a split: the soft labels a distilled student sees.

  python tools/confidence.py CONFIG WORKDIR... [--split train] [--data_root ../shared/data]
  python tools/confidence.py configs/tiny_imagenet_subsets.py:teacher_width=0.25,budget=4 \
      runs/wide2400/seed0 runs/wide2400/seed0_teachers1

For every `teachers/<dataset>` and `students/<dataset>` checkpoint directory under the workdirs
(best-by-validation step, `mlfd_jax.classifier`), and for each head of the joint teacher in
`joint/joint` (rebuilt from the config its checkpoint directory recorded, so the run's overrides
hold; `--data_root` moves its data files too), prints on the split of its dataset: top-1, the mean
probability of the top class and the mean entropy of the softmax (nats). A teacher that has
memorised its training set gives sharper soft labels there, which carry less beyond the hard label
(docs/results.md, "Wider teachers with every stage at 2,400 steps"). Each dataset is built once for
the teachers and students, whatever number of workdirs and models read it, and once more per joint
teacher (its run's own config).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys

import jax
import ml_collections
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from mlfd_jax import checkpoint, classifier, cli, fileio, train  # noqa: E402  (this repository)
from mlfd_jax.data import augment, base  # noqa: E402
from mlfd_jax.stages import specs  # noqa: E402
from mlfd_jax.stages.context import RunContext  # noqa: E402


def _summary(model, dataset, split: str) -> dict[str, float]:
  """`model(uint8 images) -> logits` scored on `split` of `dataset`."""
  correct, top_prob, entropy, n = 0, 0.0, 0.0, 0
  for batch in dataset.eval_batches(split, 500):
    keep = np.asarray(batch["mask"], bool)
    logp = jax.nn.log_softmax(model(batch["image"]), axis=-1)
    logp = np.asarray(logp)[keep]
    p = np.exp(logp)
    correct += int((logp.argmax(-1) == np.asarray(batch["label"])[keep]).sum())
    top_prob += float(p.max(-1).sum())
    entropy += float(-(p * logp).sum())
    n += int(keep.sum())
  return {"top1": correct / n, "top_prob": top_prob / n, "entropy": entropy / n}


def _moved(recorded: dict, data_root: str | None) -> dict:
  """`recorded` (the config a run's config.json holds) with the data files it names under its
  own data_root read from `data_root` instead: the run resolved its paths when it wrote them."""
  if not data_root or "data_root" not in recorded:
    return recorded
  old = recorded["data_root"].rstrip("/") + "/"
  for block in recorded["datasets"].values():
    if isinstance(block.get("path"), str) and block["path"].startswith(old):
      block["path"] = os.path.join(data_root, block["path"][len(old):])
  recorded["data_root"] = data_root
  return recorded


def _joint_heads(workdir: str, data_root: str | None):
  """(dataset, step, images -> logits of its head, its dataset) for the joint teacher of
  `workdir`, at its best-by-validation step, its data files under `data_root` when given;
  nothing if the workdir has none."""
  directory = os.path.join(workdir, "joint", "joint")
  if not os.path.isfile(os.path.join(directory, "config.json")):
    return
  recorded = json.loads(fileio.read_text(os.path.join(directory, "config.json")))["config"]
  ctx = RunContext(ml_collections.ConfigDict(_moved(recorded, data_root)), workdir)
  spec = specs.joints(ctx)[0]
  ckpts = checkpoint.Checkpoints(directory, read_only=True)
  step = ckpts.best_step() or ckpts.latest_step()
  model = ckpts.restore_model(step, train.abstract_variables(spec.init, ctx.mesh))
  # The teachers alone: spec.frozen() would also precompute every training image's maps
  # (joint.precompute_teachers), which scoring from images does not use.
  frozen = {"teachers": ctx.frozen.teachers()}
  logits = jax.jit(lambda images, head: spec.predict(
      model["params"], model["model_state"], frozen, augment.normalize(images), head),
                   static_argnames="head")
  for es in spec.eval_sets:
    yield es.name, step, functools.partial(logits, head=es.head), es.dataset


def _check_workdirs(workdirs: list[str]) -> None:
  """A path that holds no trained model would give an empty table: a typo, not a result."""
  for workdir in workdirs:
    if not any(os.path.isdir(os.path.join(workdir, d)) for d in ("teachers", "students", "joint")):
      raise ValueError(f"{workdir} holds no teachers/, students/ or joint/ folder: not a run's "
                       "workdir")


def _table(args, config) -> None:
  print(f"| workdir | model | dataset | step | {args.split} top-1 | mean top-class p | "
        f"mean entropy (nats) |\n|---|---|---|---|---|---|---|")
  datasets = {}  # name -> its dataset, built on first use
  for workdir in args.workdirs:
    for kind in ("teachers", "students"):
      root = os.path.join(workdir, kind)
      for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        model = classifier.load(os.path.join(root, name))
        if name not in datasets:
          datasets[name] = base.build_dataset({**config.datasets[name].to_dict(), "name": name})
        s = _summary(model, datasets[name], args.split)
        print(f"| {workdir} | {kind[:-1]} | {name} | {model.step} | {s['top1']:.4f} | "
              f"{s['top_prob']:.4f} | {s['entropy']:.4f} |", flush=True)
    for name, step, head, dataset in _joint_heads(workdir, args.data_root):
      s = _summary(head, dataset, args.split)
      print(f"| {workdir} | joint teacher | {name} | {step} | {s['top1']:.4f} | "
            f"{s['top_prob']:.4f} | {s['entropy']:.4f} |", flush=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("config", help="the runs' config, as main.py's --config")
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--split", default="train", choices=("train", "val", "test"))
  parser.add_argument("--data_root", default=None, help="override of the config's data_root")
  args = parser.parse_args(argv)

  def body():
    _check_workdirs(args.workdirs)
    config = cli.load_config(args.config)
    if args.data_root:
      config.data_root = args.data_root
    _table(args, config)
  return cli.run_tool("confidence.py", body)


if __name__ == "__main__":
  sys.exit(main())
