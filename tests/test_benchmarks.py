"""`python -m benchmarks.throughput` writes the JSON other tools read (../shared/DESIGN.md)."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

KEYS = {"stage", "impl", "batch", "image_size", "img_per_s", "step_ms", "flops_per_img", "mfu"}


def test_throughput_json_schema_and_figures(tmp_path):
  out = tmp_path / "bench.json"
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.throughput", "--json", str(out), "--no_torch",
       "--stages", "teacher,eval", "--batch", "16", "--warmup", "1", "--iters", "2",
       "--data", "synthetic", "--peak_n", "256"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  assert result["backend"] == "cpu"
  rows = {r["stage"]: r for r in result["results"]}
  assert set(rows) == {"teacher", "eval"}
  for row in rows.values():
    assert KEYS <= set(row), KEYS - set(row)
    assert row["impl"] == "jax" and row["batch"] == 16 and row["image_size"] == 32
    assert abs(row["img_per_s"] - 16e3 / row["step_ms"]) < 1e-6 * row["img_per_s"]
    assert 0 < row["mfu"] < 1
  # A train step costs about three forward passes: XLA's FLOPs say so.
  assert 2 < rows["teacher"]["flops_per_img"] / rows["eval"]["flops_per_img"] < 5
  assert "| teacher |" in proc.stdout and "| eval |" in proc.stdout


def _teacher_row(tmp_path, sharding: str, devices: int) -> dict:
  out = tmp_path / f"{sharding}{devices}.json"
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.throughput", "--json", str(out), "--no_torch",
       "--stages", "teacher", "--batch", "16", "--warmup", "1", "--iters", "1",
       "--data", "synthetic", "--peak_n", "256", "--sharding", sharding],
      cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  (row,) = json.loads(out.read_text())["results"]
  assert row["sharding"] == sharding and row["devices"] == devices
  return row


def test_fsdp_holds_a_fraction_of_the_state_per_device(tmp_path):
  one = _teacher_row(tmp_path, "replicated", 1)
  replicated = _teacher_row(tmp_path, "replicated", 8)
  fsdp = _teacher_row(tmp_path, "fsdp", 8)
  # FLOPs per image are the whole step's, not one device's share of it.
  assert abs(replicated["flops_per_img"] / one["flops_per_img"] - 1) < 0.1
  assert abs(fsdp["flops_per_img"] / one["flops_per_img"] - 1) < 0.1
  assert fsdp["state_bytes_total"] == replicated["state_bytes_total"]
  assert replicated["state_bytes_per_device"] == replicated["state_bytes_total"]
  # Tensors under FSDP_MIN_SIZE elements stay whole (at width 1/8 many do), so a device holds
  # more than 1/8 of the state: about 1/5 here.
  assert fsdp["state_bytes_per_device"] < replicated["state_bytes_total"] / 4


def test_end_to_end_splits_a_seeds_wall_time_and_keeps_its_accuracy(tmp_path):
  workdir, out = tmp_path / "w", tmp_path / "e2e.json"
  argv = [sys.executable, "-m", "benchmarks.end_to_end", "configs/digits.py:tiny", str(workdir),
          "--json", str(out), "--config.student_train.steps=2"]
  proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  (launch,) = result["launches"]
  models = {m["model"]: m for m in launch["models"]}
  names = ("digits_a", "digits_b", "digits_c")
  assert set(models) == {"joint", *(f"teacher/{n}" for n in names),
                         *(f"students/{n}" for n in names)}
  assert models["teacher/digits_a"]["steps"] == 4 and models["students/digits_a"]["steps"] == 2
  for m in models.values():  # each model's parts are its whole, within the log's rounding
    assert abs(m["total_s"] - m["steps_s"] - m["validation_s"] - m["checkpoints_s"]) <= 0.15
  trained = sum(m["total_s"] for m in models.values())
  assert 0 < trained < launch["wall_s"]
  assert launch["outside_models_s"] == pytest.approx(launch["wall_s"] - trained)
  # Accuracy is the workdir's own results.json.
  results = json.loads((workdir / "results.json").read_text())["datasets"]
  for n in names:
    assert result["test_top1"][n]["individual"] == [results[n]["teacher"]["test_top1"]]
    assert result["test_top1"][n]["mlfd"] == [results[n]["student"]["test_top1"]]
  # A second run into the same workdir would time skipped stages: refused, nothing touched.
  before = sorted(p.name for p in workdir.iterdir())
  again = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert again.returncode == 1
  assert again.stderr == (f"end_to_end: {workdir} is not empty; a resumed or skipped stage "
                          f"would not be timed, so give a new workdir\n")
  assert sorted(p.name for p in workdir.iterdir()) == before
  # --compare of a result with itself: every part 1.00x, every accuracy +0.00.
  same = subprocess.run([sys.executable, "-m", "benchmarks.end_to_end", "--compare", str(out),
                         str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert same.returncode == 0, same.stderr
  lines = same.stdout.splitlines()
  assert f"| total | {result['wall_s']:.1f} | {result['wall_s']:.1f} | 1.00x |" in lines
  assert "| digits_a | mlfd | " in same.stdout
  diffs = [line.split("|")[-2].strip() for line in lines if line.startswith("| digits_")]
  assert len(diffs) == 9 and set(diffs) == {"+0.00"}


def test_gpu_script_skips_the_runs_its_budget_has_no_room_for(tmp_path):
  """benchmarks/gpu.sh ends inside BUDGET_S: a run with under 30 s left is skipped, not started."""
  env = {**os.environ, "OUT": str(tmp_path), "BUDGET_S": "25"}
  proc = subprocess.run(["bash", "benchmarks/gpu.sh"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  runs = ["r18_32", "r50_224", "r50_224_student_b512", "r50_224_student_b384",
          "r50_224_student_b256"]
  skipped = [re.fullmatch(r"gpu\.sh: (\S+) skipped: (\d+) s of 25 s left", line)
             for line in proc.stdout.splitlines() if line.startswith("gpu.sh:")]
  assert [m.group(1) for m in skipped] == runs
  assert all(int(m.group(2)) <= 25 for m in skipped)
  assert not list(tmp_path.glob("*.json"))


def test_bn_folding_times_the_folded_model_a_bias_add_per_batchnorm():
  """The folded program is the model with each BatchNorm a bias add: with statistics that make
  BatchNorm exactly that (mean 0, var + eps = 1, scale 1), both compute the same outputs, and
  the folded one no longer normalises."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from benchmarks import bn_folding
  from mlfd_jax import modelfn

  fn = modelfn.from_config({"name": "resnet18", "width": 0.0625}, num_classes=3, image_size=8)
  variables = fn.init(jax.random.key(0))

  def bn_as_bias(path, value):
    name = jax.tree_util.keystr(path)
    if name.endswith("['mean']"):
      return jnp.zeros_like(value)
    if name.endswith("['var']"):
      return jnp.full_like(value, 1 - 1e-5)
    return value

  variables["model_state"] = jax.tree_util.tree_map_with_path(bn_as_bias,
                                                              variables["model_state"])
  variables["params"] = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.ones_like(v) if jax.tree_util.keystr(p).endswith("['scale']")
      else v + 0.1 if jax.tree_util.keystr(p).endswith("['bias']") else v, variables["params"])
  x = jnp.asarray(np.random.default_rng(0).random((2, 8, 8, 3), np.float32))
  forward = lambda: jax.jit(lambda v, i: fn.apply(v, i, train=False)[0])  # noqa: E731
  with bn_folding.batchnorm_as_bias():
    folded = forward().lower(variables, x).compile()
  as_is = forward().lower(variables, x).compile()
  assert "rsqrt" in as_is.as_text() and "rsqrt" not in folded.as_text()
  np.testing.assert_allclose(folded(variables, x), as_is(variables, x), rtol=1e-4, atol=1e-5)


def test_conv_lowerings_compute_the_same_convolution():
  """Every way conv_lowering times a 3x3 convolution (channels-first included, through its
  layout adapters) computes XLA's channels-last convolution, so their times compare."""
  import jax
  import numpy as np

  from benchmarks import conv_lowering

  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))
  want = conv_lowering.conv_xla(x, w)
  for name, f in conv_lowering.LOWERINGS.items():
    to_x, to_w, back = conv_lowering.TO_LAYOUT.get(name, (lambda a: a,) * 3)
    np.testing.assert_allclose(back(f(to_x(x), to_w(w))), want, rtol=1e-4, atol=1e-4,
                               err_msg=name)


@pytest.mark.parametrize("ynn,expected", [
    # YNNPACK off: every convolution on XLA's own emitter, no library fusion
    ("invalid", {"xla": 59}),
    # convolutions only: some of them move into YNNPACK fusions, and nothing else does
    ("individual_convolution", None)])
def test_conv_fusions_counts_where_each_convolution_of_the_step_runs(ynn, expected):
  """A ResNet-18 gradient has 59 convolutions (20 forward, 19 input gradients: none for the
  image, 20 kernel gradients); the census places each in XLA or in the library fusion that
  calls it, so the counts sum to 59 under any flag."""
  env = {**os.environ, "XLA_FLAGS": f"--xla_cpu_experimental_ynn_fusion_type={ynn}"}
  proc = subprocess.run(
      [sys.executable, "-c", "import json; from benchmarks import conv_fusions as c; "
       "print(json.dumps(c.census(c.training_step_hlo(0.0625, 2, 8))))"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  census = json.loads(proc.stdout)
  assert sum(census["convolutions"].values()) == 59
  if expected is not None:
    assert census["convolutions"] == expected
    assert census["fusions"] == {"__ynn_fusion": 0, "__xnn_fusion": 0, "__onednn_fusion": 0}
  else:  # every YNNPACK fusion holds a convolution: the count of each is the same
    assert set(census["convolutions"]) <= {"xla", "__ynn_fusion"}
    assert census["fusions"]["__ynn_fusion"] == census["convolutions"].get("__ynn_fusion", 0)


@pytest.mark.parametrize("flag, error", [
    ("--model=resnet19", "argument --model: invalid choice: 'resnet19' (choose from "
     "'convnext_atto', 'convnext_tiny', 'resnet18', 'resnet34', 'resnet50', 'vit_s', 'vit_ti')"),
    ("--teachers=0", "argument --teachers: must be >= 1; got 0"),
    ("--batch=-8", "argument --batch: must be >= 1; got -8"),
    ("--iters=0", "argument --iters: must be >= 1; got 0"),
])
def test_a_bad_throughput_flag_is_refused_before_anything_is_built(tmp_path, flag, error):
  """An unknown model used to end in a traceback from deep inside the spec building, and
  `--teachers=0` in a division by zero; each is now argparse's usage and one error line."""
  out = tmp_path / "t.json"
  r = subprocess.run([sys.executable, "-m", "benchmarks.throughput", flag, "--json", str(out)],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2
  *usage, last = r.stderr.splitlines()
  assert last == f"throughput.py: error: {error}"
  assert usage[0].startswith("usage: throughput.py ") and all(
      line.startswith(" ") for line in usage[1:]), r.stderr
  assert not out.exists() and r.stdout == ""


def test_end_to_end_names_why_a_stage_failed(tmp_path):
  """A stage that fails on a bad input ends end_to_end with that input's error, not only with
  the name of the log that holds it."""
  workdir = tmp_path / "w"
  r = subprocess.run([sys.executable, "-m", "benchmarks.end_to_end", "configs/digits.py:tiny",
                      str(workdir), "--config.distill.method=kdd"], cwd=ROOT, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 1
  assert r.stderr == (
      "end_to_end: [all] exited with 2 (unknown distillation method 'kdd'; valid: amtml, avg_kd, "
      "feed, feed_seq, kd, mlfd, mlfd_last (MLFD_TRACEBACK=1 shows where)); see "
      f"{workdir}/end_to_end/0_all.log\n")
  assert not (workdir / "teachers").exists()
