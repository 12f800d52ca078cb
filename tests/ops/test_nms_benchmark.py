"""Smoke test of benchmarks/nms.py (tiny sizes; asserts structure and agreement, not speed)."""

import json

from benchmarks import nms as nms_bench


def test_benchmark_records_and_cli(tmp_path, capsys):
  records = nms_bench.run_benchmark(n=40, max_output=8, repeats=2)
  assert [r["framework"] for r in records] == ["jax", "tf-eager", "tf-function"]
  keys = {"model", "step", "framework", "batch", "images_per_s", "step_ms_median", "compile_s",
          "flops_per_step", "device"}
  for r in records:
    assert keys <= set(r) and r["model"] == "nms_40" and r["step"] == "nms"
    assert r["step_ms_median"] > 0 and r["images_per_s"] > 0
  assert records[0]["compile_s"] > 0 and records[0]["ratio_to_jax"] == 1.0
  assert all(r["agrees_with_jax"] for r in records[1:])
  out = tmp_path / "nms.json"
  nms_bench.main(["--n", "30", "--max-output", "5", "--repeats", "2", "--no-tf",
                  "--out", str(out)])
  saved = json.loads(out.read_text())
  assert [r["model"] for r in saved] == ["nms_30"]
  assert "calls/s" in capsys.readouterr().out
