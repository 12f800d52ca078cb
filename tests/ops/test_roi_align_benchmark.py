"""Smoke test of benchmarks/roi_align.py (tiny sizes: structure and agreement, not speed)."""

import json

import pytest

from benchmarks import roi_align as roi_bench


def test_benchmark_records_agree_with_torchvision():
  pytest.importorskip("torchvision")
  records = roi_bench.run_benchmark(rois=12, size=8, channels=3, batch=2, output=3,
                                    repeats=2)
  assert [(r["framework"], r["step"]) for r in records] == [
      ("jax", "forward"), ("jax", "forward_backward"),
      ("torchvision", "forward"), ("torchvision", "forward_backward")]
  for r in records:
    assert r["step_ms_median"] > 0 and r["images_per_s"] > 0 and len(r["step_ms_all"]) == 2
    assert r["torch_over_jax"] > 0
  for r in records[:2]:
    assert r["compile_s"] > 0 and r["max_abs_diff_vs_torch"] < 1e-4


def test_cli_writes_json_without_torch(tmp_path, capsys):
  out = tmp_path / "roi.json"
  roi_bench.main(["--rois", "6", "--size", "8", "--channels", "2", "--output", "2",
                  "--repeats", "2", "--no-torch", "--out", str(out)])
  saved = json.loads(out.read_text())
  assert [r["step"] for r in saved["records"]] == ["forward", "forward_backward"]
  assert saved["command"].startswith("python -m benchmarks.roi_align")
  assert saved["threads"] >= 1 and "calls/s" in capsys.readouterr().out
