"""The GAN reproducibility table on hand-written workdirs (exact values)."""

import json

import pytest

from benchmarks import gan_runs
from train.configs import mnist_dcgan


def _run(path, seed, scores, fcds, classifier="runs/cnn_a", **config_overrides):
  """A finished self-conditioned run: evaluations at steps 1000, 2000, ... and results.json."""
  config = mnist_dcgan.get_config()
  config.seed = seed
  config.classifier_workdir = classifier
  for key, value in config_overrides.items():
    config[key] = value
  path.mkdir()
  records = [{"step": 100, "kind": "train", "d_loss": 1.0, "g_loss": 1.0}]
  for i, (score, fcd) in enumerate(zip(scores, fcds)):
    records.append({"step": 1000 * (i + 1), "kind": "eval", "classifier_score": score,
                    "frechet_classifier_distance": fcd, "real_classifier_score": 9.83})
  (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
  final = {"step": 1000 * len(scores), "classifier_score": scores[-1],
           "frechet_classifier_distance": fcds[-1]}
  (path / "results.json").write_text(json.dumps({
      "config": config.to_dict(), "steps": final["step"], "train_seconds": 1200.5 + seed,
      "cluster_seconds": 200.0, "eval": final}))
  return path


def test_spread_table_and_goal(tmp_path, capsys):
  dirs = [_run(tmp_path / "a", 0, [8.5, 9.25], [12.0, 7.0]),
          _run(tmp_path / "b", 1, [8.75, 9.5], [11.0, 6.5], classifier="runs/cnn_b"),
          _run(tmp_path / "c", 2, [9.0, 9.75], [10.0, 6.0])]
  runs = [gan_runs.load_run(d) for d in dirs]
  assert runs[1]["evals"] == {1000: {"classifier_score": 8.75,
                                     "frechet_classifier_distance": 11.0},
                              2000: {"classifier_score": 9.5,
                                     "frechet_classifier_distance": 6.5}}
  stats = gan_runs.spread(runs)
  assert stats["classifier_score"] == {"values": [9.25, 9.5, 9.75], "mean": 9.5, "min": 9.25,
                                       "max": 9.75}
  assert stats["frechet_classifier_distance"]["mean"] == 6.5
  assert "conditional_accuracy" not in stats
  assert gan_runs.goal_met(stats, ("classifier_score", ">=", 9.3)) == [False, True, True]
  assert gan_runs.goal_met(stats, ("frechet_classifier_distance", "<=", 7.0)) == [True] * 3

  out = tmp_path / "spread.json"
  code = gan_runs.main([str(d) for d in dirs] + ["--goal", "classifier_score>=9.3",
                                                 "--out", str(out)])
  printed = capsys.readouterr().out
  assert code == 1  # one run misses the goal: the mean (9.5) does not hide it
  assert "met by 2 of 3 runs (NOT by every run)" in printed
  assert "| b | 1 | cnn_b | 8.75 / 11 | 9.5 / 6.5 | 1202 | 200 |" in printed
  assert "| classifier_score | 9.5000 | 9.2500 | 9.7500 |" in printed
  saved = json.loads(out.read_text())
  assert saved["goal_met"] == [False, True, True]
  assert saved["spread"]["classifier_score"]["max"] == 9.75
  assert gan_runs.main([str(d) for d in dirs[1:]] + ["--goal", "classifier_score>=9.3"]) == 0


def test_runs_of_different_recipes_or_unfinished_runs_are_refused(tmp_path, capsys):
  a = _run(tmp_path / "a", 0, [9.4], [7.0])
  b = _run(tmp_path / "b", 1, [9.4], [7.0], num_train_steps=8000)
  assert gan_runs.main([str(a), str(b)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: the runs are not one recipe: config fields differ "
                        "(num_train_steps: 12000, 8000)")
  assert err.count("\n") == 1
  assert gan_runs.main([str(a), str(tmp_path / "missing")]) == 2
  assert "is not a finished run: expected" in capsys.readouterr().err
  with pytest.raises(ValueError, match="--goal must be NAME>=VALUE"):
    gan_runs.parse_goal("score>9")


def test_classifier_only_spread_from_re_evaluations(tmp_path, capsys):
  """``eval_<classifier>.json`` files of ``--mode=evaluate``: one checkpoint, two classifiers."""
  a = _run(tmp_path / "a", 0, [9.0, 9.5], [8.0, 6.5], classifier="runs/cnn_a")
  for name, score, fcd in (("cnn_a", 9.5, 6.5), ("cnn_b", 9.375, 6.75)):
    (a / f"eval_{name}.json").write_text(json.dumps({
        "checkpoint_step": 2000, "checkpoint": "latest",
        "eval": {"step": 2000, "classifier_score": score, "frechet_classifier_distance": fcd,
                 "classifier_workdir": f"/abs/runs/{name}"}}))
  # A classifier's own evaluation file in the same folder is not a GAN re-evaluation.
  (a / "eval_test.json").write_text(json.dumps({"accuracy": 0.99}))
  b = _run(tmp_path / "b", 1, [9.25, 9.625], [7.0, 6.0])
  run = gan_runs.load_run(a)
  assert [r["classifier"] for r in run["reevals"]] == ["/abs/runs/cnn_a", "/abs/runs/cnn_b"]
  assert gan_runs.classifier_spread(run) == {
      2000: {"classifier_score": 0.125, "frechet_classifier_distance": 0.25}}
  assert gan_runs.classifier_spread(gan_runs.load_run(b)) == {}

  out = tmp_path / "spread.json"
  assert gan_runs.main([str(a), str(b), "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "| a | 2000 | cnn_b | 9.3750 | 6.7500 |" in printed
  assert ("classifier-only spread of a at step 2000: classifier_score 0.1250, "
          "frechet_classifier_distance 0.2500") in printed
  saved = json.loads(out.read_text())
  assert saved["runs"][0]["classifier_spread"] == {
      "2000": {"classifier_score": 0.125, "frechet_classifier_distance": 0.25}}
  assert saved["runs"][1]["reevals"] == []
