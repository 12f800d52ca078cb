"""Smoke test of ``python -m benchmarks.speedrun`` on a slice of MNIST: it trains with the
dataset on device (one compiled program per epoch), scores the full test set and writes its
records. No timing thresholds; the real figures are in benchmarks/RESULTS.md."""

import json
import math

from benchmarks import speedrun


def test_speedrun_trains_scores_and_reports(mnist_dir, tmp_path):
  out = tmp_path / "speedrun.json"
  code = speedrun.main(["--data-dir", str(mnist_dir), "--seeds", "2", "--epochs", "2",
                        "--train-examples", "3000", "--batch", "100", "--target", "0.9",
                        "--out", str(out)])
  result = json.loads(out.read_text())
  summary, seeds = result["summary"], result["seeds"]
  assert [r["seed"] for r in seeds] == [0, 1]
  assert result["settings"]["steps_per_epoch"] == 30
  assert result["settings"]["test_examples"] == 10000
  for r in seeds:
    # 60 Adam steps on 3000 images: far better than chance on the full 10k test set.
    assert 0.9 < r["test_accuracy"] <= 1.0, r
    assert r["train_s"] > 0 and math.isfinite(r["final_epoch_train_loss"])
  assert seeds[0]["test_accuracy"] != seeds[1]["test_accuracy"] or (
      seeds[0]["final_epoch_train_loss"] != seeds[1]["final_epoch_train_loss"])  # own seeds
  assert summary["reached_target"] and code == 0
  assert summary["compile_s"] > 0
  assert min(r["test_accuracy"] for r in seeds) == summary["min_test_accuracy"]
