"""The multi-label tagging task on mosaics of the embedded digits (tiny settings): the steps
against NumPy, a trainer run whose test figures are recomputed here with scikit-learn from
the restored best checkpoint, fine-tuning from its workdir, and the CLI (train, evaluate,
predict; bad input at the CLI is tested in tests/apps/test_tag.py)."""

import json

import jax
import numpy as np
import optax
import pytest
from sklearn import metrics as skm

from jaxvision import models
from jaxvision.tasks import multilabel
from jaxvision.training import state as state_lib
from jaxvision.training import trainer
from tests.support import run_cli
from train.configs import cifar10_mosaic_tagging

CONFIG = "train/configs/cifar10_mosaic_tagging.py:tiny"


def _config(**overrides):
  c = cifar10_mosaic_tagging.get_config("tiny")
  c.disable_progress_bar = True
  c.num_devices = 1
  for k, v in overrides.items():
    c[k] = v
  return c


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def test_steps_against_numpy():
  """BCE, its head gradient (SGD at rate 1: the update is minus the gradient) and the eval
  step's probabilities and masked losses, against float64 NumPy from the model's own
  features."""
  model = models.create_model("SimpleCNN", num_classes=4)
  state = state_lib.create_train_state(model, optax.sgd(1.0), input_shape=(16, 16, 1),
                                       rng=jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  images = rng.random((6, 16, 16, 1)).astype(np.float32)
  labels = (rng.random((6, 4)) < 0.4).astype(np.float32)
  logits, out = state.apply_fn({"params": state.params}, images, train=False)
  z = np.asarray(logits, np.float64)
  h = np.asarray(out["pre_logits"], np.float64)
  p = _sigmoid(z)
  bce = -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean(1)
  new, metrics = multilabel.make_train_step()(state, {"image": images, "label": labels})
  assert float(metrics["loss"]) == pytest.approx(bce.mean(), rel=1e-5)
  assert float(metrics["label_accuracy"]) == pytest.approx(np.mean((z > 0) == (labels > 0.5)))
  grad_kernel = h.T @ (p - labels) / labels.size
  np.testing.assert_allclose(state.params["Dense_1"]["kernel"] - new.params["Dense_1"]["kernel"],
                             grad_kernel, rtol=2e-4, atol=1e-7)
  mask = np.array([1, 1, 1, 0, 1, 0], bool)
  ev = multilabel.eval_step(state, {"image": images, "label": labels, "mask": mask})
  np.testing.assert_allclose(ev["probabilities"], p, rtol=1e-5)
  np.testing.assert_allclose(ev["loss"], bce * mask, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("multilabel") / "run"
  config = _config(num_devices=None)  # the 8 test devices: batches of 16 sharded 2 per device
  task = multilabel.MultiLabelTask(config)
  results = trainer.train(task, workdir)
  return workdir, config, task, results


def test_test_figures_recomputed_from_the_best_checkpoint(tiny_run):
  workdir, config, task, results = tiny_run
  ev = results["eval"]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  val_map = {r["step"]: r["mAP"] for r in records if r["kind"] == "eval"}
  assert set(val_map) == {2, 4}
  best = max(val_map, key=lambda s: (val_map[s], -s))
  assert ev["checkpoint_step"] == best and ev["split"] == "test"
  assert ev["thresholds_from"] == "val" and ev["best_val"]["split"] == "val"
  assert ev["best_val"]["mAP"] == pytest.approx(val_map[best], rel=1e-9)

  # The best checkpoint, run here on the mosaics composed by NumPy (pp: value_range(0, 1)).
  restored = trainer.restore(multilabel.MultiLabelTask(config), workdir, "best")
  assert restored.step == best
  ds = task.dataset

  def probs(split):
    x = ds.split(split).images().astype(np.float32) / 255.0
    return np.asarray(jax.jit(multilabel.predict_step)(restored.state, x), np.float64)

  val_p, test_p = probs("val"), probs("test")
  val_y, test_y = ds.split("val").labels, ds.split("test").labels
  names = list(ds.class_names)
  # Thresholds: each label's best F1 on val, over every threshold that could be chosen.
  saved = json.loads((workdir / "thresholds.json").read_text())
  assert saved["checkpoint_step"] == best and saved["class_names"] == names
  thresholds = np.array(saved["thresholds"])
  for k in range(len(names)):
    candidates = np.r_[np.unique(val_p[:, k]), 2.0]
    best_f1 = max(skm.f1_score(val_y[:, k], val_p[:, k] >= t, zero_division=0)
                  for t in candidates)
    got = skm.f1_score(val_y[:, k], val_p[:, k] >= thresholds[k], zero_division=0)
    assert got == pytest.approx(best_f1, abs=1e-12)
  # Test: AP and thresholded P/R/F1 with the val thresholds.
  has_pos = test_y.sum(0) > 0
  ap = skm.average_precision_score(test_y[:, has_pos], test_p[:, has_pos], average=None)
  assert ev["mAP"] == pytest.approx(ap.mean(), rel=1e-5)
  pred = test_p >= thresholds
  prec, rec, f1, support = skm.precision_recall_fscore_support(test_y, pred, average=None,
                                                               zero_division=0)
  for k, name in enumerate(names):
    entry = ev["per_label"][name]
    assert entry["threshold"] == thresholds[k]
    assert entry["support"] == support[k]
    assert (entry["precision"], entry["recall"], entry["f1"]) == pytest.approx(
        (prec[k], rec[k], f1[k]), abs=1e-9)
  assert ev["num_examples"] == 48
  assert (workdir / "plots" / "test_tags.png").stat().st_size > 0
  info = results["dataset"]
  assert info["name"] == "mosaic:digits" and info["splits"]["test"]["source_split"] == "test"


def test_init_from_its_workdir_with_a_frozen_backbone(tiny_run, tmp_path, capsys):
  workdir, config, _, _ = tiny_run
  before = jax.device_get(trainer.restore(multilabel.MultiLabelTask(config), workdir,
                                          "best").state.params)
  probe = _config(init_from=str(workdir), head="^Dense_1/", freeze_backbone=True,
                  num_train_steps=2, eval_every_steps=2)
  capsys.readouterr()
  trainer.train(multilabel.MultiLabelTask(probe), tmp_path / "probe")
  out = capsys.readouterr().out
  print(out.splitlines()[1])
  assert f"init_from {workdir} (step " in out and "loaded 8 of 8 parameter arrays" in out
  after = jax.device_get(trainer.restore(multilabel.MultiLabelTask(probe), tmp_path / "probe",
                                         "latest").state.params)
  for name in ("Conv_0", "Conv_1", "Dense_0"):
    for leaf in ("kernel", "bias"):
      np.testing.assert_array_equal(after[name][leaf], before[name][leaf])
  assert not np.array_equal(after["Dense_1"]["kernel"], before["Dense_1"]["kernel"])


def test_bad_settings_fail_before_any_data(tmp_path):
  with pytest.raises(ValueError, match=r"expected a mosaic dataset name 'mosaic:"):
    trainer.train(multilabel.MultiLabelTask(_config(dataset="digits")), tmp_path / "a")
  with pytest.raises(ValueError, match=r"unknown mosaic option\(s\) \['size'\]"):
    c = _config()
    c.mosaic.size = 3
    trainer.train(multilabel.MultiLabelTask(c), tmp_path / "b")
  with pytest.raises(ValueError, match="split 'validation' is not a mosaic split"):
    trainer.train(multilabel.MultiLabelTask(_config(eval_split="validation")), tmp_path / "c")
  assert not any((tmp_path / d).exists() for d in "abc")


def test_predict_needs_thresholds_of_its_checkpoint(tiny_run, tmp_path):
  workdir, *_ = tiny_run
  with pytest.raises(ValueError, match="no tuned thresholds in .*apps.tag evaluate"):
    multilabel.load_thresholds(tmp_path, 2, ["a"])
  saved = json.loads((workdir / "thresholds.json").read_text())
  with pytest.raises(ValueError, match=r"for checkpoint step \d+, not step 99"):
    multilabel.load_thresholds(workdir, 99, saved["class_names"])
  (record,) = multilabel.tags_from_probabilities(np.array([[0.2, 0.7, 0.5]]), ["a", "b", "c"],
                                                 [0.3, 0.6, 0.5], ["x.png"])
  assert [t["label"] for t in record["tags"]] == ["b", "c"]  # >= threshold, most probable first
  assert record["probabilities"] == {"a": 0.2, "b": 0.7, "c": 0.5}


def test_cli_train_evaluate_predict(tmp_path):
  from PIL import Image
  workdir, tfds = tmp_path / "run", tmp_path / "tfds"
  out = run_cli(f"--config={CONFIG}", f"--workdir={workdir}", "--config.num_devices=1",
                "--config.disable_progress_bar=True", tfds_dir=tfds)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "test mAP" in out.stdout and (workdir / "thresholds.json").is_file()
  results = json.loads((workdir / "results.json").read_text())
  out = run_cli(f"--workdir={workdir}", "--mode=evaluate", tfds_dir=tfds)
  assert out.returncode == 0, out.stderr[-3000:]
  again = json.loads((workdir / "eval_test.json").read_text())["eval"]
  assert again["mAP"] == pytest.approx(results["eval"]["mAP"], rel=1e-6)
  image = tmp_path / "digit.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24), np.uint8)).save(image)
  out = run_cli(f"--workdir={workdir}", "--mode=predict", f"--images={image}", tfds_dir=tfds)
  assert out.returncode == 0, out.stderr[-3000:]
  (record,) = json.loads(out.stdout[out.stdout.index("["):])
  thresholds = dict(zip(*(json.loads((workdir / "thresholds.json").read_text())[k]
                          for k in ("class_names", "thresholds"))))
  tagged = {t["label"] for t in record["tags"]}
  assert tagged == {k for k, p in record["probabilities"].items() if p >= thresholds[k]}
  assert record["file"] == str(image)
