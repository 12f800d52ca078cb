"""End-to-end runs of the GAN trainer on the embedded 8x8 digits (tiny models, few steps)."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxvision import data
from jaxvision.data import pipeline
from jaxvision.data.builders import digits as digits_lib
from jaxvision.tasks import classification
from jaxvision.tasks.gan import task as gan
from jaxvision.training import checkpoint as ckpt_lib, sharding, trainer
from train.configs import digits_cnn, mnist_cgan, mnist_dcgan

REPO = pathlib.Path(__file__).resolve().parents[2]


def _config(conditional=False, self_conditioned=False, **overrides):
  """Tiny digits variants of mnist_dcgan (plain or, by default there, self-conditioned) and
  mnist_cgan."""
  if conditional:
    c = mnist_cgan.get_config()
  else:
    c = mnist_dcgan.get_config("self_conditioned" if self_conditioned else "plain")
  c.dataset = "digits"
  c.generator.latent_dim = 16
  c.generator.base_features = 8
  if conditional or self_conditioned:
    c.generator.embed_dim = 4
  c.discriminator.base_features = 8
  c.batch_size = 16
  c.num_train_steps = 8
  c.log_every_steps = 1
  c.eval_every_steps = 4
  c.checkpoint_every_steps = 2
  c.num_eval_samples = 200
  c.num_real_samples = 400  # more than the 360 test digits: the whole split
  c.eval_batch_size = 40
  c.standing_stats_samples = 64
  c.grid_rows, c.grid_columns = 2, 5
  c.interpolation_rows, c.interpolation_steps = 3, 4
  c.disable_progress_bar = True
  for k, v in overrides.items():
    c[k] = v
  return c


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
  """A (barely) trained digits classifier: its workdir, as the GAN evaluation expects."""
  workdir = tmp_path_factory.mktemp("classifier")
  c = digits_cnn.get_config()
  c.batch_size, c.num_train_steps, c.eval_every_steps = 32, 20, 20
  c.optimizer.warmup_steps = 2
  c.disable_progress_bar = True
  trainer.train(classification.ClassificationTask(c), workdir)
  return workdir


def _train(config, workdir):
  return trainer.train(gan.GANTask(config), workdir)


def _generate(config, workdir, **kwargs):
  return gan.GANTask(config).generate(workdir, **kwargs)["samples"]


def _train_losses(workdir):
  losses = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    r = json.loads(line)
    if r["kind"] == "train" and "d_loss" in r:
      losses[r["step"]] = (r["d_loss"], r["g_loss"])  # a resumed run rewrites redone steps
  return np.array([losses[s] for s in sorted(losses)])


def _latest_state(workdir, config):
  ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", async_save=False)
  try:
    step = ckpt.latest_step()
    meta = ckpt.read_meta(step)
    generator, discriminator = gan.create_models(config, meta["image_shape"], 10)
    num_examples = (meta.get("self_condition") or {}).get("num_examples", 0)
    state = gan.create_state(config, generator, discriminator, meta["image_shape"], 8,
                             sharding.make_mesh(), num_examples=num_examples)
    return step, jax.device_get(ckpt.restore(step, state, meta))
  finally:
    ckpt.close()


def _diverge_at_step_5(config, workdir, monkeypatch):
  """Runs ``config`` into ``workdir`` with a NaN batch at step 5: it stops with a clear error
  and keeps only the checkpoints before it."""
  real = pipeline.make_train_iterator

  def poisoned(*args, **kwargs):
    start = kwargs.get("start_step", 0)
    for i, b in enumerate(real(*args, **kwargs)):
      yield dict(b, image=np.full_like(b["image"], np.nan)) if start + i == 4 else b

  monkeypatch.setattr(pipeline, "make_train_iterator", poisoned)
  with pytest.raises(trainer.DivergenceError, match=r"d_loss became nan at step 5"):
    _train(config, workdir)
  monkeypatch.undo()


def test_diverged_run_stops_then_resumes_to_match_an_uninterrupted_run(tmp_path, monkeypatch):
  """A NaN batch at step 5 stops the run with no checkpoint after step 4; rerun with clean
  data, it resumes from step 4 and ends where an uninterrupted run ends."""
  config = _config(eval_every_steps=8, num_devices=1)
  config.discriminator.normalization = "none"
  config.loss = "non_saturating"
  full = _train(config, tmp_path / "full")

  _diverge_at_step_5(config, tmp_path / "resumed", monkeypatch)
  ckpt = ckpt_lib.Checkpointer(tmp_path / "resumed" / "checkpoints")
  assert ckpt.all_steps() == [2, 4]  # nothing at or after the divergence
  ckpt.close()
  resumed = _train(config, tmp_path / "resumed")

  assert resumed["resumed_from_step"] == 4 and resumed["steps"] == full["steps"] == 8
  np.testing.assert_allclose(_train_losses(tmp_path / "resumed"),
                             _train_losses(tmp_path / "full"), rtol=1e-6)
  step_full, s_full = _latest_state(tmp_path / "full", config)
  step_res, s_res = _latest_state(tmp_path / "resumed", config)
  assert step_full == step_res == 8 and s_res.has_ema
  for a, b in zip(jax.tree_util.tree_leaves(s_full), jax.tree_util.tree_leaves(s_res)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  # Without quality metrics the run still writes its sample grids.
  assert resumed["eval"] == {"step": 8, "generator": "ema"}
  for png in ("samples_8.png", "samples_final.png", "interpolation.png"):
    assert (tmp_path / "resumed" / "plots" / png).stat().st_size > 2000


def test_self_conditioned_run_trains_on_cluster_ids_and_resumes_exactly(tmp_path, monkeypatch):
  """Clusters at steps 0, 3 and 6 replace the dataset's labels; a run stopped at step 5 (NaN)
  resumes from its step-4 checkpoint, which holds the step-3 cluster ids, and ends where an
  uninterrupted run ends, ids included."""
  config = _config(self_conditioned=True, eval_every_steps=8, num_devices=1)
  config.discriminator.normalization = "none"
  assert config.self_condition.num_clusters == 50  # the mnist_dcgan config's
  config.self_condition.num_clusters = 4
  config.self_condition.recluster_every_steps = 3
  config.self_condition.feature_batch_size = 100
  real = pipeline.make_train_iterator
  label_args = []

  def recording(*args, **kwargs):
    label_args.append(kwargs.get("labels"))
    return real(*args, **kwargs)

  monkeypatch.setattr(pipeline, "make_train_iterator", recording)
  full = _train(config, tmp_path / "full")
  # The dataset's labels only give the batch shapes; every batch trained on has cluster ids.
  assert label_args[0] is None and len(label_args) == 4
  assert all(ids.shape == (1437,) and ids.min() >= 0 and ids.max() < 4 for ids in label_args[1:])
  records = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
  clusters = [r for r in records if r["kind"] == "cluster"]
  assert [r["step"] for r in clusters] == [0, 3, 6]
  assert all(0.1 <= r["purity"] <= 1 and r["smallest_cluster"] > 0 for r in clusters)
  assert "kept_fraction" not in clusters[0] and 0 <= clusters[1]["kept_fraction"] <= 1
  assert full["cluster_seconds"] > 0 and "conditional_accuracy" not in full["eval"]

  monkeypatch.undo()
  _diverge_at_step_5(config, tmp_path / "resumed", monkeypatch)
  resumed = _train(config, tmp_path / "resumed")
  assert resumed["resumed_from_step"] == 4 and resumed["steps"] == 8
  np.testing.assert_allclose(_train_losses(tmp_path / "resumed"),
                             _train_losses(tmp_path / "full"), rtol=1e-6)
  _, s_full = _latest_state(tmp_path / "full", config)
  _, s_res = _latest_state(tmp_path / "resumed", config)
  np.testing.assert_array_equal(s_full.pseudo_labels, label_args[-1])
  for a, b in zip(jax.tree_util.tree_leaves(s_full), jax.tree_util.tree_leaves(s_res)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  records = _generate(config, tmp_path / "resumed", num=6, out=tmp_path / "gen",
                         checkpoint="latest")
  assert all(r["class_name"] == f"cluster{r['class_id']}" for r in records)
  # Self-conditioning needs the conditional pair.
  config = _config(num_devices=1)
  config.self_condition.num_clusters = 4
  with pytest.raises(ValueError, match="needs generator 'ConditionalGenerator'"):
    _train(config, tmp_path / "unconditional")


def test_images_outside_the_tanh_range_are_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match=r"must lie in \[-1, 1\].*found values in \[0, 2\]"):
    _train(_config(pp_train="value_range(0, 2)"), tmp_path)


def _digits_test_set():
  images, labels, _ = digits_lib.load_digits_splits()["test"]
  return images, labels


def test_quality_of_real_test_images_matches_the_classifier(classifier_dir):
  """Real test digits scored as if generated: accuracy as the classifier's own evaluation,
  score as the real reference, distance ~0 to themselves; references from NumPy/SciPy."""
  builder, info = data.get_dataset("digits")
  # num_real above both split sizes: the whole train (1437) and test (360) splits.
  evaluator = gan.QualityEvaluator(classifier_dir, builder=builder, info=info, num_real=2000,
                                   batch_size=40)
  images, labels = _digits_test_set()
  ev = evaluator.evaluate(images, labels.astype(np.int32), info.class_names)
  cls_eval = json.loads((classifier_dir / "results.json").read_text())["eval"]
  assert ev["num_samples"] == ev["num_real_samples"] == 360
  np.testing.assert_allclose(ev["conditional_accuracy"], cls_eval["accuracy"], atol=1e-12)
  for k in range(10):
    np.testing.assert_allclose(ev["per_class_accuracy"][str(k)],
                               cls_eval["per_class"][str(k)]["recall"], atol=1e-12)
  cm = np.asarray(cls_eval["confusion_matrix"])  # rows true, columns predicted
  np.testing.assert_allclose(ev["predicted_class_fractions"], cm.sum(0) / cm.sum(), atol=1e-12)
  np.testing.assert_allclose(ev["classifier_score"], ev["real_classifier_score"], rtol=1e-9)
  assert abs(ev["frechet_classifier_distance"]) < 1e-6 * ev["real_train_test_distance"] + 1e-8

  # References in float64 from the classifier's outputs on the digits as sklearn stores them
  # (the evaluator holds the classifier that tasks.classification.load_classifier restored).
  apply_fn, variables, meta = evaluator.apply_fn, evaluator.variables, evaluator.meta

  def outputs(x):
    # pp 'resize(16)|value_range(0, 1)': bilinear, half-pixel centres, rounded to uint8.
    x = jax.image.resize(np.asarray(x, np.float32), (len(x), 16, 16, 1), "bilinear")
    x = np.clip(np.round(np.asarray(x)), 0, 255) / 255.0
    logits, out = jax.jit(lambda v, x: apply_fn(v, x, train=False))(variables, x)
    p = np.asarray(jax.nn.softmax(logits.astype(np.float64)), np.float64)
    return p / p.sum(1, keepdims=True), np.asarray(out["pre_logits"], np.float64)

  assert meta["pp_eval"] == "resize(16)|value_range(0, 1)"
  probs, test_feats = outputs(images)
  marginal = probs.mean(0)
  kl = np.sum(probs * (np.log(np.maximum(probs, 1e-300)) - np.log(marginal)), axis=1)
  np.testing.assert_allclose(ev["real_classifier_score"], np.exp(kl.mean()), rtol=1e-4)
  _, train_feats = outputs(digits_lib.load_digits_splits()["train"][0])
  mu1, mu2 = train_feats.mean(0), test_feats.mean(0)
  s1, s2 = np.cov(train_feats, rowvar=False), np.cov(test_feats, rowvar=False)
  # Tr sqrt(S1 S2) = sum of the square roots of the (real, >= 0) eigenvalues of S1 S2.
  root_trace = np.sum(np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)))
  want = np.sum((mu1 - mu2)**2) + np.trace(s1) + np.trace(s2) - 2 * root_trace
  np.testing.assert_allclose(ev["real_train_test_distance"], want, rtol=2e-3)


def test_conditional_run_outputs_and_generate(tmp_path, classifier_dir):
  # Two devices exercise the sharded sampler; an unnormalised critic compiles fastest.
  config = _config(conditional=True, classifier_workdir=str(classifier_dir),
                   checkpoint_every_steps=-1, num_devices=2)
  config.discriminator.normalization = "none"
  results = _train(config, tmp_path)
  ev = results["eval"]
  assert ev["step"] == 8 and ev["num_samples"] == 200 and ev["generator"] == "ema"
  assert 1.0 <= ev["classifier_score"] <= 10.0 and ev["frechet_classifier_distance"] > 0
  assert ev["real_classifier_score"] > 1.0 and ev["real_train_test_distance"] > 0
  assert 0.0 <= ev["conditional_accuracy"] <= 1.0
  per_class = ev["per_class_accuracy"]
  assert sorted(per_class) == [str(k) for k in range(10)]
  # 200 class-balanced samples: 20 per class, so the mean of the per-class values.
  np.testing.assert_allclose(np.mean(list(per_class.values())), ev["conditional_accuracy"])
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["eval"] == ev and saved["steps"] == 8
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in records if r["kind"] == "eval"]
  assert [r["step"] for r in evals] == [4, 8] and "conditional_accuracy" in evals[0]
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  for png in ("samples_4.png", "samples_8.png", "samples_final.png", "interpolation.png",
              "curves.png"):
    assert (tmp_path / "plots" / png).stat().st_size > 2000
  ckpt = ckpt_lib.Checkpointer(tmp_path / "checkpoints", best_metric=gan.BEST_METRIC,
                               best_mode="min")
  assert ckpt.best_step() in (4, 8) and ckpt.read_meta(8)["num_classes"] == 10
  ckpt.close()

  # --mode=evaluate with the run's own classifier reproduces the step-8 evaluation exactly
  # (same latents, same standing statistics); the file is named after the classifier.
  again = gan.GANTask(config).evaluate(tmp_path, checkpoint="latest")
  assert again["file"] == f"eval_{classifier_dir.name}.json" and again["checkpoint_step"] == 8
  assert again["eval"] == ev
  assert json.loads((tmp_path / again["file"]).read_text())["eval"] == ev
  with pytest.raises(ValueError, match="needs --config.classifier_workdir"):
    gan.GANTask(_config(conditional=True)).evaluate(tmp_path)
  # Another seed would score other latents than the run's evaluations: refused, in one line
  # that names the run's value, before anything is restored.
  other = ml_collections.ConfigDict(config.to_dict())
  other.seed = config.seed + 1
  other.generator.base_features = config.generator.base_features * 2
  with pytest.raises(ValueError) as err:
    gan.GANTask(other).evaluate(tmp_path)
  assert str(err.value) == (
      f"--mode=evaluate samples with the run's own settings; pass "
      f"--config.generator.base_features={config.generator.base_features} "
      f"--config.seed={config.seed} (the run's values; found "
      f"generator.base_features={2 * config.generator.base_features}, "
      f"seed={config.seed + 1})")

  out = tmp_path / "generated"
  records = _generate(config, tmp_path, num=13, out=out, checkpoint="latest")
  files = sorted(p.name for p in out.glob("*.png"))
  assert len(files) == 13
  assert [r["class_id"] for r in records] == [i % 10 for i in range(13)]
  assert files[12] == "sample_00012_class_2.png" and records[12]["file"] == files[12]
  pixels = np.asarray(Image.open(out / files[0]))
  assert pixels.shape == (8, 8) and pixels.dtype == np.uint8 and pixels.std() > 0
  listing = json.loads((out / "samples.json").read_text())
  assert listing["checkpoint_step"] == 8 and listing["samples"] == records


@pytest.mark.slow
def test_cli_train_and_generate(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  base = [sys.executable, "-m", "train.main", "--config=train/configs/mnist_dcgan.py",
          f"--workdir={tmp_path / 'run'}", "--config.dataset=digits",
          "--config.generator.base_features=8", "--config.discriminator.base_features=8",
          "--config.batch_size=16", "--config.eval_batch_size=40",
          "--config.standing_stats_samples=64", "--config.num_train_steps=3"]
  out = subprocess.run(base, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Done: 3 steps" in out.stdout and "quality metrics skipped" in out.stdout
  out = subprocess.run(base + ["--mode=generate", "--num=5", f"--out={tmp_path / 'gen'}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  # The default mnist_dcgan is self-conditioned: samples are named by their cluster.
  assert len(list((tmp_path / "gen").glob("sample_*_class_cluster*.png"))) == 5
  out = subprocess.run(base + ["--mode=predict"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode != 0 and "not available for config.task 'gan'" in out.stderr


def test_a_run_without_a_classifier_warns_once(capfd, caplog):
  task = gan.GANTask(_config())
  with caplog.at_level("WARNING"):
    task.prepare()
  out, err = capfd.readouterr()
  assert out.count("classifier_workdir is not set") == 1
  assert "classifier_workdir" not in err
  assert not [r for r in caplog.records if "classifier_workdir" in r.getMessage()]


def test_classifier_workdir_without_a_finished_run_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no results.json in classifier workdir"):
    _train(_config(classifier_workdir=str(tmp_path / "cls")), tmp_path / "run")
