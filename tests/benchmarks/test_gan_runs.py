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


def test_earlier_out_file_adds_its_runs(tmp_path, capsys):
  """Runs whose workdirs are gone come from an earlier ``--out`` file, recipe check included."""
  a = _run(tmp_path / "a", 0, [8.5, 9.25], [12.0, 7.0])
  b = _run(tmp_path / "b", 1, [8.75, 9.5], [11.0, 6.5], classifier="runs/cnn_b")
  c = _run(tmp_path / "c", 2, [9.0, 9.75], [10.0, 6.0])
  (a / "eval_cnn_b.json").write_text(json.dumps({
      "checkpoint_step": 2000, "eval": {"classifier_score": 9.375,
                                        "frechet_classifier_distance": 7.5,
                                        "classifier_workdir": "runs/cnn_b"}}))
  (a / "eval_cnn_a.json").write_text(json.dumps({
      "checkpoint_step": 2000, "eval": {"classifier_score": 9.25,
                                        "frechet_classifier_distance": 7.0,
                                        "classifier_workdir": "runs/cnn_a"}}))
  all_three = tmp_path / "all.json"
  assert gan_runs.main([str(a), str(b), str(c), "--out", str(all_three)]) == 0
  direct = capsys.readouterr().out
  first_two = tmp_path / "ab.json"
  assert gan_runs.main([str(a), str(b), "--out", str(first_two)]) == 0
  capsys.readouterr()
  merged = tmp_path / "merged.json"
  assert gan_runs.main([str(first_two), str(c), "--out", str(merged)]) == 0
  assert capsys.readouterr().out == direct
  assert json.loads(merged.read_text()) == json.loads(all_three.read_text())
  assert json.loads(merged.read_text())["runs"][0]["classifier_spread"] == {
      "2000": {"classifier_score": 0.125, "frechet_classifier_distance": 0.5}}

  # A recorded run of another recipe is refused like a workdir.
  d = _run(tmp_path / "d", 3, [9.5], [6.0], num_train_steps=8000)
  assert gan_runs.main([str(first_two), str(d)]) == 2
  assert "config fields differ (num_train_steps: 12000, 12000, 8000)" in capsys.readouterr().err

  # An older file without configs: its runs are counted and named as not checked.
  old = json.loads(first_two.read_text())
  for run in old["runs"]:
    del run["config"]
  old_file = tmp_path / "old.json"
  old_file.write_text(json.dumps(old))
  assert gan_runs.main([str(old_file), str(c), "--goal", "classifier_score>=9.3"]) == 1
  printed = capsys.readouterr().out
  assert "| classifier_score | 9.5000 | 9.2500 | 9.7500 |" in printed
  assert f"recipe not checked for {a}, {b}: recorded without its config" in printed

  not_runs = tmp_path / "other.json"
  not_runs.write_text(json.dumps({"accuracy": 0.99}))
  assert gan_runs.main([str(not_runs)]) == 2
  assert "is not a gan_runs --out file: expected a JSON object with 'runs'" in (
      capsys.readouterr().err)
  del old["runs"][0]["evals"]
  old_file.write_text(json.dumps(old))
  assert gan_runs.main([str(old_file)]) == 2
  assert f"{old_file}: a run lacks evals; expected the keys" in capsys.readouterr().err
