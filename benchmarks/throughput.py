r"""Throughput of every stage's step, JAX beside the PyTorch reference, on the current backend.

  python -m benchmarks.throughput        # ResNet-18 1/8, batch 128, 32 px, 3 teachers
  python -m benchmarks.throughput --json benchmarks/cpu.json --iters 20
  python -m benchmarks.throughput --model resnet18 --width 1 --stages teacher,student:mlfd
  python -m benchmarks.throughput --model resnet50 --width 1 --image_size 224 --batch 64 \
      --dtype bfloat16 --data synthetic

The JAX steps are the pipeline's own: the `Task`s the stages build from a config
(`configs/tiny_imagenet_subsets.py` with the model, width, size, batch, dtype and number of
teachers set by flags), compiled by `train.Trainer` exactly as training compiles them, with
random-init teachers and joint teacher served as the finished models. For each stage (the teacher
step, the joint-teacher step, the student step of each method, evaluation) it reports images/s
and ms/step (median of synchronised steps after warm-up, on one device-resident batch), compile
time, FLOPs per image from XLA's cost analysis, MFU against the best large-matmul rate measured
here in the same dtype, and XLA's peak-memory estimate of the program. `student:mlfd` is also
timed fed by the real input pipeline (host batches, prefetch, host->device copies), beside the
same steps on the device-resident batch, to show whether the pipeline starves the step.
`benchmarks/torch_reference.py` times the same steps written the way the paper's code runs them;
its rows reuse the JAX side's FLOPs (same model, same step). The JSON schema is in
../shared/DESIGN.md ("Benchmarks").
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import numpy as np

from benchmarks import timing

STAGES = ("teacher", "joint", "student:mlfd", "student:kd", "student:avg_kd", "student:amtml",
          "student:feed", "eval")
TORCH_KEYS = {"teacher": "teacher", "joint": "joint", "student:mlfd": "student_mlfd",
              "student:kd": "student_kd", "eval": "eval"}
REAL_FILE = "tiny_imagenet30_32.npz"
NUM_CLASSES = 30  # configs/tiny_imagenet_subsets.py cuts 30 classes into --teachers datasets


# The pipeline, built from a config ------------------------------------------------------------
def write_synthetic(path: str, image_size: int, per_class: int = 16) -> None:
  """Random uint8 images of every class, in the npz layout the pipeline reads."""
  rng = np.random.default_rng(0)
  n = NUM_CLASSES * per_class
  labels = np.arange(n, dtype=np.int32) % NUM_CLASSES
  images = rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8)
  np.savez(path, x_train=images, y_train=labels, x_test=images[: 4 * NUM_CLASSES],
           y_test=labels[: 4 * NUM_CLASSES])


def make_config(args, data_root: str, data_file: str):
  from configs import tiny_imagenet_subsets
  from mlfd_jax.config_lib import model_block

  c = tiny_imagenet_subsets.get_config(f"k={args.teachers}")
  c.data_root = data_root
  for block in c.datasets.values():
    block.path = os.path.join(data_root, data_file)
    block.image_size = args.image_size
  for group in (c.teachers, c.students):
    for name in group.keys():
      group[name] = model_block(args.model, width=args.width)
      if args.depthwise:
        group[name].depthwise = args.depthwise
  for train_cfg in (c.teacher_train, c.joint_train, c.student_train):
    train_cfg.batch_size, train_cfg.dtype = args.batch, args.dtype
  c.distill.probe_steps, c.distill.probe_examples = 2, 64  # probes: fitted once, not timed
  c.joint.precompute_teachers = c.distill.precompute_targets = args.precompute
  c.sharding = args.sharding
  return c


class JaxBench:
  """Each stage's compiled step, with random-init frozen models served as the finished ones."""

  def __init__(self, args, workdir: str, data_root: str, data_file: str):
    from mlfd_jax.stages.context import RunContext
    from mlfd_jax.stages import specs

    self.args = args
    self.ctx = RunContext(make_config(args, data_root, data_file), workdir)
    self.key = jax.random.key(0)
    for spec in specs.teachers(self.ctx):
      self.ctx.frozen.put(spec, spec.init(self.key))
    joint = specs.joints(self.ctx)[0]
    self.ctx.frozen.put(joint, joint.init(self.key))

  def task(self, stage: str):
    """(spec, task) of `stage`, built as the stage builds it."""
    from mlfd_jax.stages import joint, specs, students, teachers

    ctx, cfg = self.ctx, self.ctx.config
    if stage == "teacher":
      return specs.teachers(ctx)[0], teachers.teacher_task(ctx, ctx.names[0])
    if stage == "joint":
      target, heads = specs.joint_targets(ctx)[0]
      return specs.joint(ctx, target, heads), joint.joint_task(ctx, target, heads)
    cfg.distill.method = stage.split(":", 1)[1]
    spec = specs.student(ctx, ctx.names[0])
    return spec, spec.task(students.distillation_loss(spec.model),
                           students.method_gate(spec.model))

  def measure(self, stage: str) -> dict[str, Any]:
    from mlfd_jax import parallel, train

    args, mesh = self.args, self.ctx.mesh
    spec, task = self.task(stage.replace("eval", "student:mlfd"))
    trainer = train.Trainer(task, spec.train_cfg, mesh, total_steps=100_000)
    model, train_state = trainer.init(self.key)
    state_bytes = state_bytes_per_device((model, train_state))
    data = spec.train_data()
    if stage == "eval":
      host = next(iter(data.eval_batches("val", args.batch)))
      batch = parallel.to_global({k: host[k] for k in ("image", "label", "mask")}, mesh)
      t = time.perf_counter()
      compiled = trainer.evaluator.lower(model, batch).compile()
      compile_s = time.perf_counter() - t
      step = lambda: jax.block_until_ready(compiled(model, task.frozen, batch))  # noqa: E731
      return {**_row(stage, args, compiled, compile_s, timing.median_ms(
          step, warmup=args.warmup, iters=args.iters)), **state_bytes}
    host = next(data.train_batches(args.batch, seed=0))
    batch, base_key = parallel.to_global(host, mesh), parallel.replicated_key(1, mesh)
    t = time.perf_counter()
    compiled = trainer.lower(model, train_state, batch, base_key).compile()
    compile_s = time.perf_counter() - t
    state = [model, train_state]

    def run(b, sync: bool):
      state[0], state[1], metrics = compiled(state[0], state[1], task.frozen, b, base_key)
      if sync:
        jax.block_until_ready(metrics)

    row = {**_row(stage, args, compiled, compile_s, timing.median_ms(
        lambda: run(batch, True), warmup=args.warmup, iters=args.iters)), **state_bytes}
    if stage == "student:mlfd" and args.pipeline_steps > 0:
      row["input_pipeline"] = self._pipeline(run, batch, data, state)
    return row

  def _pipeline(self, run, batch, data, state) -> dict[str, float]:
    """ms/step over `pipeline_steps` unsynchronised steps, on the device-resident batch and fed
    by the input pipeline (host batches, prefetch, copies), as the training loop runs them."""
    from mlfd_jax import parallel

    n, out = self.args.pipeline_steps, {}
    feeds = {"device_resident": lambda: batch}
    batches = parallel.prefetch(data.train_batches(self.args.batch, seed=1), self.ctx.mesh,
                                size=self.args.prefetch)
    feeds["pipeline"] = lambda: next(batches)
    try:
      for name, feed in feeds.items():
        run(feed(), True)
        t = time.perf_counter()
        for _ in range(n):
          run(feed(), False)
        jax.block_until_ready(state)
        out[f"{name}_ms"] = 1e3 * (time.perf_counter() - t) / n
    finally:
      batches.close()
    out["ratio"] = out["device_resident_ms"] / out["pipeline_ms"]
    out["prefetch"] = self.args.prefetch
    return out


def state_bytes_per_device(tree) -> dict[str, int]:
  """Bytes of the trained state (parameters, BatchNorm statistics, optimizer state) that one
  device holds, and the state's whole size: equal when replicated, about 1/n under fsdp."""
  leaves = jax.tree.leaves(tree)
  device = leaves[0].addressable_shards[0].device
  held = sum(s.data.nbytes for x in leaves for s in x.addressable_shards if s.device == device)
  return {"state_bytes_per_device": int(held),
          "state_bytes_total": int(sum(x.nbytes for x in leaves))}


def _row(stage: str, args, compiled, compile_s: float, step_ms: float) -> dict[str, Any]:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # XLA's cost analysis of a partitioned program counts one device's share of the batch.
  flops = float((cost or {}).get("flops", 0.0)) * jax.device_count()
  mem = compiled.memory_analysis()
  peak = None
  if mem is not None:
    peak = int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
               - mem.alias_size_in_bytes)
  return {**_common(stage, args, "jax", step_ms), "compile_s": compile_s,
          "flops_per_img": flops / args.batch, "peak_memory_bytes": peak}


def _common(stage: str, args, impl: str, step_ms: float) -> dict[str, Any]:
  kind, _, method = stage.partition(":")
  return {"stage": kind, "method": method or None, "impl": impl, "model": args.model,
          "precompute": bool(args.precompute) and impl == "jax" and kind in ("joint", "student"),
          "width": args.width, "batch": args.batch, "image_size": args.image_size,
          "teachers": args.teachers, "dtype": args.dtype, "step_ms": step_ms,
          "sharding": args.sharding if impl == "jax" else None,
          "depthwise": _depthwise(args) if impl == "jax" else None,
          "devices": jax.device_count() if impl == "jax" else 1,
          "img_per_s": 1e3 * args.batch / step_ms}


def _has_depthwise(model: str) -> bool:
  from mlfd_jax.models import model_options

  return "depthwise" in model_options(model)


def _depthwise(args) -> str | None:
  """How a ConvNeXt's depthwise convs ran (models/depthwise.py); None for other models."""
  from mlfd_jax.models import depthwise

  return depthwise.resolve(args.depthwise or "auto") if _has_depthwise(args.model) else None


# PyTorch ------------------------------------------------------------------------------------
def torch_rows(args, stages: list[str]) -> list[dict[str, Any]]:
  from benchmarks import torch_reference

  if not torch_reference.available():
    print("torch is not installed (pip install -r requirements-bench.txt): no torch rows",
          file=sys.stderr)
    return []
  steps = torch_reference.make_steps(
      model=args.model, width=args.width, batch=args.batch, image_size=args.image_size,
      num_teachers=args.teachers, num_classes=NUM_CLASSES // args.teachers, dtype=args.dtype,
      device="cuda" if jax.default_backend() == "gpu" else "cpu", threads=args.torch_threads)
  rows = []
  for stage in stages:
    if stage in TORCH_KEYS and TORCH_KEYS[stage] in steps:
      ms = timing.median_ms(steps[TORCH_KEYS[stage]], warmup=args.warmup, iters=args.iters)
      rows.append(_common(stage, args, "torch", ms))
  return rows


# Report -------------------------------------------------------------------------------------
def machine_peak(args) -> dict[str, float]:
  n = args.peak_n or (8192 if jax.default_backend() != "cpu" else 2048)
  peaks = {"jax": timing.jax_matmul_peak(args.dtype, n)}
  if not args.no_torch:
    from benchmarks import torch_reference
    if torch_reference.available():
      device = "cuda" if jax.default_backend() == "gpu" else "cpu"
      peaks["torch"] = timing.torch_matmul_peak(args.dtype, n, device)
  return peaks


def add_mfu(rows: list[dict], peak: float) -> None:
  """FLOPs per image of each stage from the JAX program (the torch step is the same model);
  `peak` is one device's, so a row's MFU is against the peak of all the devices it ran on."""
  flops = {(r["stage"], r["method"]): r["flops_per_img"] for r in rows if r["impl"] == "jax"}
  for r in rows:
    r["flops_per_img"] = flops.get((r["stage"], r["method"]), 0.0)
    r["mfu"] = (r["flops_per_img"] * r["img_per_s"] / (peak * r["devices"])) if peak else 0.0


def format_table(rows: list[dict]) -> str:
  lines = ["| stage | jax img/s | torch img/s | jax/torch | jax ms | torch ms | compile s | "
           "GFLOP/img | MFU jax | MFU torch | XLA peak MiB | state MiB/device |",
           "|---|" + "---|" * 11]
  keys = list(dict.fromkeys((r["stage"], r["method"]) for r in rows))
  for key in keys:
    j = next((r for r in rows if (r["stage"], r["method"]) == key and r["impl"] == "jax"), None)
    t = next((r for r in rows if (r["stage"], r["method"]) == key and r["impl"] == "torch"),
             None)
    name = key[0] + (f":{key[1]}" if key[1] else "")
    cell = lambda r, k, f: f.format(r[k]) if r and r.get(k) is not None else "—"  # noqa: E731
    ratio = f"{j['img_per_s'] / t['img_per_s']:.2f}" if j and t else "—"
    mem = f"{j['peak_memory_bytes'] / 2 ** 20:.0f}" if j and j.get("peak_memory_bytes") else "—"
    held = f"{j['state_bytes_per_device'] / 2 ** 20:.2f}" if j else "—"
    lines.append(f"| {name} | {cell(j, 'img_per_s', '{:.0f}')} | {cell(t, 'img_per_s', '{:.0f}')}"
                 f" | {ratio} | {cell(j, 'step_ms', '{:.1f}')} | {cell(t, 'step_ms', '{:.1f}')}"
                 f" | {cell(j, 'compile_s', '{:.1f}')} | "
                 f"{(j or t)['flops_per_img'] / 1e9:.3f} | {cell(j, 'mfu', '{:.3f}')} | "
                 f"{cell(t, 'mfu', '{:.3f}')} | {mem} | {held} |")
  return "\n".join(lines)


def _at_least(kind, low):
  """An argparse type: `kind(text)`, refused below `low` in argparse's one error line."""
  def parse(text):
    value = kind(text)  # a ValueError: argparse's "invalid <kind> value"
    if value < low:
      raise argparse.ArgumentTypeError(f"must be >= {low}; got {text}")
    return value
  parse.__name__ = kind.__name__
  return parse


def parse_args(argv):
  from mlfd_jax import models
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--json", help="write the results here (schema: ../shared/DESIGN.md)")
  p.add_argument("--model", default="resnet18", choices=models.MODELS.names())
  p.add_argument("--width", type=_at_least(float, 1e-3), default=0.125)
  p.add_argument("--batch", type=_at_least(int, 1), default=128)
  p.add_argument("--image_size", type=_at_least(int, 1), default=32)
  p.add_argument("--teachers", type=_at_least(int, 1), default=3,
                 help="datasets, so frozen teachers")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--depthwise", choices=("auto", "shifts", "xla"),
                 help="ConvNeXt only: how its depthwise convs run (models/depthwise.py)")
  p.add_argument("--sharding", default="replicated", choices=("replicated", "fsdp"),
                 help="the trained state's layout over the devices (config.sharding)")
  p.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)}")
  p.add_argument("--warmup", type=_at_least(int, 0), default=3)
  p.add_argument("--iters", type=_at_least(int, 1), default=10)
  p.add_argument("--pipeline_steps", type=_at_least(int, 0), default=20,
                 help="steps of the input-pipeline comparison (0: skip it)")
  p.add_argument("--prefetch", type=int, default=2,
                 help="batches the input pipeline builds ahead in that comparison (training: 2)")
  p.add_argument("--data", choices=("auto", "real", "synthetic"), default="auto",
                 help=f"real: ../shared/data/{REAL_FILE}; auto: real when it exists")
  p.add_argument("--data_root", default="../shared/data")
  p.add_argument("--precompute", action="store_true",
                 help="time the joint-teacher and student steps with the frozen part's outputs "
                      "precomputed (joint.precompute_teachers, distill.precompute_targets)")
  p.add_argument("--no_torch", action="store_true", help="skip the PyTorch reference")
  p.add_argument("--torch_threads", type=int, default=0, help="0: torch's default")
  p.add_argument("--peak_n", type=int, default=0, help="matmul size of the peak (0: auto)")
  args = p.parse_args(argv)
  stages = [s for s in args.stages.split(",") if s]
  bad = [s for s in stages if s not in STAGES]
  if bad:
    p.error(f"unknown stage {bad[0]!r}; valid: {', '.join(STAGES)}")
  if args.depthwise and not _has_depthwise(args.model):
    p.error(f"--depthwise is for ConvNeXt models, not {args.model}")
  if NUM_CLASSES % args.teachers:
    p.error(f"--teachers={args.teachers} does not divide the {NUM_CLASSES} classes")
  return args, stages


def main(argv=None) -> int:
  args, stages = parse_args(argv)
  real = os.path.join(args.data_root, REAL_FILE)
  use_real = args.data == "real" or (args.data == "auto" and os.path.exists(real))
  with tempfile.TemporaryDirectory() as tmp:
    data_root, data_file = (args.data_root, REAL_FILE) if use_real else (tmp, "synthetic.npz")
    if not use_real:
      write_synthetic(os.path.join(tmp, data_file), args.image_size)
    bench = JaxBench(args, os.path.join(tmp, "workdir"), data_root, data_file)
    rows = []
    for stage in stages:
      rows.append(bench.measure(stage))
      print(f"{stage}: jax {rows[-1]['img_per_s']:.0f} img/s", file=sys.stderr)
  if not args.no_torch:
    rows += torch_rows(args, stages)
  peaks = machine_peak(args)
  add_mfu(rows, max(peaks.values()))
  cpu = timing.cpu_description()
  out = {"backend": jax.default_backend(),
         "device": (f"{cpu['model']} ({cpu['isa']}; {os.cpu_count()} cores)"
                    if jax.default_backend() == "cpu" else jax.devices()[0].device_kind),
         "jax": jax.__version__, "data": "real" if use_real else "synthetic",
         "peak_flops": peaks, "command": "python -m benchmarks.throughput " + " ".join(
             sys.argv[1:] if argv is None else argv), "results": rows}
  print(format_table(rows))
  pipeline = next((r["input_pipeline"] for r in rows if "input_pipeline" in r), None)
  if pipeline:
    print(f"student:mlfd fed by the input pipeline: {pipeline['pipeline_ms']:.1f} ms/step vs "
          f"{pipeline['device_resident_ms']:.1f} on a device-resident batch "
          f"({100 * pipeline['ratio']:.0f}% of its speed; prefetch {pipeline['prefetch']})")
  print(f"peak (best {', '.join(f'{k} {v / 1e9:.0f}' for k, v in peaks.items())} GFLOP/s "
        f"matmul); {out['device']}")
  if args.json:
    timing.write_json(args.json, out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
