"""`python -m benchmarks.throughput` writes the JSON other tools read (../shared/DESIGN.md)."""

import json
import pathlib
import subprocess
import sys

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
