"""End-to-end runs of the classification trainer on the embedded digits (tiny settings)."""

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from jaxvision import data
from jaxvision.data import datasets, pipeline
from jaxvision.tasks import classification
from jaxvision.training import checkpoint as ckpt_lib, trainer
from train.configs import digits_cnn

REPO = pathlib.Path(__file__).resolve().parents[2]


def _config(**overrides):
  c = digits_cnn.get_config()
  c.batch_size = 32
  c.eval_batch_size = 64  # 360 test digits: the last batch is padded
  c.num_train_steps = 12
  c.log_every_steps = 1
  c.eval_every_steps = 12
  c.checkpoint_every_steps = 4
  c.optimizer.warmup_steps = 2
  c.disable_progress_bar = True
  for k, v in overrides.items():
    c[k] = v
  return c


def _train(config, workdir):
  return trainer.train(classification.ClassificationTask(config), workdir)


def _train_losses(workdir):
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = {}
  for r in records:
    if r["kind"] == "train" and "loss" in r:
      losses[r["step"]] = r["loss"]  # a resumed run rewrites the steps it redoes
  return [losses[s] for s in sorted(losses)]


def _final_params(workdir, config):
  ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", async_save=False)
  step = ckpt.latest_step()
  meta = ckpt.read_meta(step)
  ckpt.close()
  state = trainer.restore(classification.ClassificationTask(config), workdir, "latest").state
  return step, meta, jax.device_get(state.params)


class _Crash(RuntimeError):
  pass


def _crash_after(monkeypatch, num_batches):
  """Makes the train iterator raise once ``num_batches`` batches were drawn (a crash)."""
  real = pipeline.make_train_iterator

  def patched(*args, **kwargs):
    it = real(*args, **kwargs)
    start = kwargs.get("start_step", 0)

    def gen():
      for i, b in enumerate(it):
        if start + i >= num_batches:
          raise _Crash(f"simulated crash before step {start + i + 1}")
        yield b
    return gen()

  monkeypatch.setattr(pipeline, "make_train_iterator", patched)


def test_resumed_run_matches_uninterrupted_run(tmp_path, monkeypatch):
  config = _config()
  full = _train(config, tmp_path / "full")

  _crash_after(monkeypatch, 6)  # crashes after step 6; the last checkpoint is step 4
  with pytest.raises(_Crash):
    _train(config, tmp_path / "resumed")
  monkeypatch.undo()
  assert ckpt_lib.Checkpointer(tmp_path / "resumed" / "checkpoints").latest_step() == 4
  resumed = _train(config, tmp_path / "resumed")

  assert resumed["resumed_from_step"] == 4 and resumed["steps"] == full["steps"] == 12
  np.testing.assert_allclose(_train_losses(tmp_path / "resumed"), _train_losses(tmp_path / "full"),
                             rtol=1e-6)
  _, _, p_full = _final_params(tmp_path / "full", config)
  _, _, p_res = _final_params(tmp_path / "resumed", config)
  for a, b in zip(jax.tree_util.tree_leaves(p_full), jax.tree_util.tree_leaves(p_res)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert resumed["eval"]["accuracy"] == full["eval"]["accuracy"]


def test_outputs_and_exactly_once_evaluation(tmp_path):
  results = _train(_config(num_train_steps=8, eval_every_steps=4),
                                              tmp_path)
  ev = results["eval"]
  assert ev["split"] == "test" and ev["num_examples"] == 360
  cm = np.asarray(ev["confusion_matrix"])
  assert cm.sum() == 360 and cm.sum(axis=1).tolist() == [
      ev["per_class"][str(k)]["support"] for k in range(10)]
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["steps"] == 8 and saved["train_seconds"] > 0
  assert saved["config"]["model"]["name"] == "SimpleCNN"
  assert set(saved["eval"]["per_class"]["3"]) >= {"precision", "recall", "f1"}
  kinds = [json.loads(l)["kind"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert kinds.count("eval") == 2 and "train" in kinds
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  for png in ("curves.png", "confusion_matrix.png"):
    assert (tmp_path / "plots" / png).stat().st_size > 5000


def test_nan_loss_stops_without_writing_a_checkpoint(tmp_path, monkeypatch):
  real = pipeline.make_train_iterator

  def poisoned(*args, **kwargs):
    for i, b in enumerate(real(*args, **kwargs)):
      if i == 5:
        b = dict(b, image=np.full_like(b["image"], np.nan))
      yield b

  monkeypatch.setattr(pipeline, "make_train_iterator", poisoned)
  with pytest.raises(trainer.DivergenceError, match=r"became nan at step 6"):
    _train(_config(checkpoint_every_steps=2), tmp_path)
  ckpt = ckpt_lib.Checkpointer(tmp_path / "checkpoints")
  assert ckpt.all_steps() == [2, 4]  # nothing at or after the divergence
  ckpt.close()


def test_unknown_dataset_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset 'mnist2'"):
    _train(_config(dataset="mnist2"), tmp_path)


def test_missing_data_folder_is_a_clear_error(tmp_path):
  (tmp_path / "mnist").mkdir()
  (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
    _train(
        _config(dataset="mnist", data_dir=str(tmp_path / "mnist")), tmp_path / "run")


def test_wrong_image_shape_for_the_model_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match=r"configured for images of shape \(28, 28, 1\).*"
                                       r"produces \(16, 16, 1\)"):
    _train(_config(input_shape=(28, 28, 1)), tmp_path)


def test_checkpoint_from_another_model_is_refused_and_kept(tmp_path):
  _train(_config(num_train_steps=4, eval_every_steps=4), tmp_path)
  before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  other = _config(num_train_steps=8)
  other.model.hidden = 32
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match="Dense_0/kernel"):
    _train(other, tmp_path)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


@pytest.mark.parametrize("overrides,message", [
    ({"num_train_steps": -1, "num_epochs": 0}, r"config.num_epochs must be > 0.*found "
                                                r"num_epochs=0"),
    ({"eval_split": "tset"}, r"bad split 'tset'.*splits: \['test', 'train'\]"),
    ({"optimizer.learning_rate": -0.1}, r"learning_rate must be > 0; found -0.1"),
])
def test_nonsense_settings_fail_before_training(tmp_path, overrides, message):
  config = _config()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for name in parents:
      node = node[name]
    node[leaf] = value
  with pytest.raises(ValueError, match=message):
    _train(config, tmp_path)
  assert not (tmp_path / "checkpoints").exists()


def test_predict_needs_a_positive_top_k(tmp_path):
  task = classification.ClassificationTask(_config())
  with pytest.raises(ValueError, match="top_k must be a positive number of labels; found 0"):
    task.predict(tmp_path, images=["a.png"], top_k=0)
  probs = np.array([[0.1, 0.6, 0.3]])
  for bad in (0, -1, 1.5, True):  # -1 would otherwise slice away the last label
    with pytest.raises(ValueError, match=rf"top_k must be a positive number of labels; found "
                                         rf"{bad!r}"):
      classification.top_k_labels(probs, ["a", "b", "c"], bad)
  (record,) = classification.top_k_labels(probs, ["a", "b", "c"], 5)
  assert [(r["label"], r["probability"]) for r in record["top_k"]] == [("b", 0.6), ("c", 0.3),
                                                                        ("a", 0.1)]


def test_init_from_another_workdir_with_a_frozen_backbone(tmp_path, capsys):
  """A probe on a trained workdir's features: the convolutions come from its best checkpoint
  and stay exactly as they were; the resized dense layers start fresh and train."""
  base = _config(num_train_steps=8, eval_every_steps=8)
  _train(base, tmp_path / "base")
  trained = jax.device_get(trainer.restore(classification.ClassificationTask(base),
                                           tmp_path / "base").state.params)
  probe = _config(num_train_steps=4, eval_every_steps=4, init_from=str(tmp_path / "base"),
                  head="^Dense_", freeze_backbone=True)
  probe.model.hidden = 32  # Dense_0 and Dense_1 change shape: not loaded
  capsys.readouterr()
  _train(probe, tmp_path / "probe")
  out = capsys.readouterr().out
  print(out.splitlines()[0])
  assert ("loaded 5 of 8 parameter arrays; freshly initialised: Dense_0/bias, Dense_0/kernel, "
          "Dense_1/kernel") in out
  after = jax.device_get(trainer.restore(classification.ClassificationTask(probe),
                                         tmp_path / "probe", "latest").state.params)
  backbone = [k for k in after if not k.startswith("Dense_")]
  assert backbone
  for name in backbone:
    for a, b in zip(jax.tree.leaves(after[name]), jax.tree.leaves(trained[name])):
      np.testing.assert_array_equal(a, b)
  assert after["Dense_1"]["kernel"].shape == (32, 10)
  # Evaluating the probe needs its own checkpoint only, not the workdir it started from.
  shutil.rmtree(tmp_path / "base")
  ev = classification.ClassificationTask(probe).evaluate(tmp_path / "probe")["eval"]
  assert ev["num_examples"] == 360 and ev["step"] == 4


def test_init_from_a_missing_workdir_fails_before_training(tmp_path):
  with pytest.raises(FileNotFoundError, match="no config.json in"):
    _train(_config(init_from=str(tmp_path / "nowhere")), tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_checkpoint_of_another_dataset_is_refused_naming_both(tmp_path, monkeypatch):
  """A workdir trained on one dataset, resumed with another of the same shapes and classes:
  an error naming both datasets, and the workdir (checkpoints, config.json) is kept."""
  # Registered in a copy of the registry, so later tests in this process do not see it.
  monkeypatch.setattr(datasets, "_REGISTRY", dict(datasets._REGISTRY))

  @data.register_dataset("digits_relabelled", takes_data_dir=False)
  def _resolve(name, data_dir):  # the digits under another name: same shapes and classes
    del data_dir
    builder, info = data.get_dataset("digits")
    return builder, dataclasses.replace(info, name=name)

  _train(_config(num_train_steps=4, eval_every_steps=4), tmp_path)
  config_json = (tmp_path / "config.json").read_text()
  with pytest.raises(ckpt_lib.CheckpointMismatchError,
                     match=r"dataset: this run has 'digits_relabelled', the checkpoint has "
                           r"'digits'"):
    _train(_config(num_train_steps=8, dataset="digits_relabelled"), tmp_path)
  assert (tmp_path / "config.json").read_text() == config_json
  assert ckpt_lib.Checkpointer(tmp_path / "checkpoints").latest_step() == 4


def test_a_workdir_past_the_configured_steps_is_refused(tmp_path):
  _train(_config(num_train_steps=4, eval_every_steps=4), tmp_path)
  with pytest.raises(ValueError, match=r"latest checkpoint is at step 4, past this run's 2 "
                                       r"steps"):
    _train(_config(num_train_steps=2), tmp_path)


def _cli(*args, timeout=300):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "train.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_kill_during_training_keeps_last_checkpoint_and_resumes(tmp_path):
  """SIGKILL mid-run (possibly mid-save), then the same command resumes and finishes."""
  workdir = tmp_path / "run"
  args = ["--config=train/configs/digits_cnn.py", f"--workdir={workdir}",
          "--config.num_train_steps=60", "--config.checkpoint_every_steps=3",
          "--config.eval_every_steps=60", "--config.batch_size=32",
          "--config.disable_progress_bar=True"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.Popen([sys.executable, "-m", "train.main", *args], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt_dir = workdir / "checkpoints"
  deadline = time.time() + 240
  while time.time() < deadline:
    steps = [p for p in ckpt_dir.glob("*") if p.name.isdigit()] if ckpt_dir.exists() else []
    if len(steps) >= 2:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  out = _cli(*args)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  assert results["steps"] == 60 and results["resumed_from_step"] >= 3


@pytest.mark.slow
def test_cli_evaluate_and_predict(tmp_path):
  from PIL import Image
  from sklearn.datasets import load_digits
  workdir = tmp_path / "run"
  base = ["--config=train/configs/digits_cnn.py", f"--workdir={workdir}"]
  out = _cli(*base, "--config.num_epochs=6", "--config.disable_progress_bar=True")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Results in" in out.stdout and "[eval]" in out.stdout
  # evaluate and predict read the config from the workdir (config.json): no --config needed.
  out = _cli(f"--workdir={workdir}", "--mode=evaluate", "--split=test")
  assert out.returncode == 0, out.stderr[-3000:]
  saved = json.loads((workdir / "eval_test.json").read_text())
  assert saved["eval"]["num_examples"] == 360 and saved["eval"]["accuracy"] > 0.8
  assert saved["eval"]["flip_tta"] is False
  # Test-time flips: a separate file, the single-view one kept; digits are not mirror images,
  # so the mirrored half of each prediction changes the loss.
  out = _cli(*base, "--config.eval_flip_tta=true", "--mode=evaluate", "--split=test")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Wrote eval_test_flip_tta.json" in out.stdout and "(flip TTA)" in out.stdout
  tta = json.loads((workdir / "eval_test_flip_tta.json").read_text())["eval"]
  assert tta["flip_tta"] is True and tta["num_examples"] == 360
  assert tta["loss"] != saved["eval"]["loss"]
  assert json.loads((workdir / "eval_test.json").read_text()) == saved

  digits = load_digits()
  paths = []
  for i in range(5):
    img = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
    path = tmp_path / f"digit_{i}.png"
    Image.fromarray(img).resize((32, 32), Image.NEAREST).save(path)
    paths.append(str(path))
  out = _cli(f"--workdir={workdir}", "--mode=predict", "--images=" + ",".join(paths),
             "--top_k=2")
  assert out.returncode == 0, out.stderr[-3000:]
  preds = json.loads(out.stdout[out.stdout.index("["):])
  assert [p["file"] for p in preds] == paths
  for p in preds:
    probs = [t["probability"] for t in p["top_k"]]
    assert len(probs) == 2 and probs[0] >= probs[1] and 0 < sum(probs) <= 1 + 1e-6
  top1 = [int(p["top_k"][0]["label"]) for p in preds]
  assert sum(t == int(y) for t, y in zip(top1, digits.target[:5])) >= 4

  out = _cli(*base, "--mode=predict", f"--images={tmp_path / 'missing.png'}")
  assert out.returncode != 0 and "missing.png" in out.stderr


def test_linear_probe_on_imagenet_weights(tmp_path, capsys):
  """EfficientNet-Lite0's ImageNet weights under a new 2-class head, trained as a linear probe
  on a small folder of RGB images: the backbone (BatchNorm statistics included) is exactly the
  pretrained one after training."""
  from PIL import Image
  from jaxvision import models
  rng = np.random.default_rng(0)
  for label in ("cats", "dogs"):
    (tmp_path / "photos" / label).mkdir(parents=True)
    for i in range(6):
      pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(tmp_path / "photos" / label / f"{i}.png")
  c = _config(dataset=f"{tmp_path / 'photos'}?size=32&validation_split=0.34",
              eval_split="validation", batch_size=8, eval_batch_size=8, num_train_steps=2,
              eval_every_steps=2, checkpoint_every_steps=-1, init_from="imagenet",
              head="^classifier/", freeze_backbone=True,
              pp_train="value_range(-0.9921875, 1)", pp_eval="value_range(-0.9921875, 1)")
  c.model = ml_collections.ConfigDict({"name": "EfficientNetLite0"})
  capsys.readouterr()
  _train(c, tmp_path / "run")
  assert ("freshly initialised: classifier/bias, classifier/kernel"
          in capsys.readouterr().out)
  state = trainer.restore(classification.ClassificationTask(c), tmp_path / "run",
                          "latest").state
  pretrained, _ = models.pretrained_variables("EfficientNetLite0")
  np.testing.assert_array_equal(state.params["stem_conv"]["kernel"],
                                pretrained["params"]["stem_conv"]["kernel"])
  np.testing.assert_array_equal(state.batch_stats["stem_bn"]["mean"],
                                pretrained["batch_stats"]["stem_bn"]["mean"])
  assert state.params["classifier"]["kernel"].shape == (1280, 2)


def test_trainable_differentiates_only_the_matching_parameters():
  """``make_train_step(trainable=...)``: the head's gradient equals the full gradient's head
  part; every other parameter gets zero (its backward pass is not computed)."""
  import optax
  from jaxvision import models
  from jaxvision.training import state as state_lib
  model = models.create_model("SimpleCNN", num_classes=3)
  state = state_lib.create_train_state(model, optax.sgd(1.0), input_shape=(16, 16, 1),
                                       rng=jax.random.PRNGKey(0))
  batch = {"image": jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 1)),
           "label": np.array([0, 1, 2, 1], np.int32)}
  full, _ = classification.make_train_step()(state, batch)
  head, metrics = classification.make_train_step(trainable="^Dense_1/")(state, batch)
  # With SGD at rate 1 the update is minus the gradient.
  for name in ("Dense_1",):
    for leaf in ("kernel", "bias"):
      np.testing.assert_allclose(head.params[name][leaf], full.params[name][leaf], rtol=1e-6)
  for name in state.params:
    if name != "Dense_1":
      for leaf, before in state.params[name].items():
        np.testing.assert_array_equal(head.params[name][leaf], before)
        assert not np.allclose(full.params[name][leaf], before)
  assert float(metrics["grad_norm"]) > 0


def test_cli_fine_tunes_imagenet_weights_on_a_folder(tmp_path):
  """``imagefolder_finetune`` from the CLI on a folder made here, with a validation split: it
  trains (ImageNet weights under a new 2-class head), evaluates on the held-out images, and
  predicts the folder's class names for a file."""
  from PIL import Image
  rng = np.random.default_rng(1)
  for label, colour in (("cats", (200, 60, 40)), ("dogs", (40, 90, 210))):
    (tmp_path / "photos" / label).mkdir(parents=True)
    for i in range(6):
      pixels = np.clip(rng.normal(colour, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
      Image.fromarray(pixels).save(tmp_path / "photos" / label / f"{i}.jpg")
  workdir = tmp_path / "run"
  out = _cli("--config=train/configs/imagefolder_finetune.py", f"--workdir={workdir}",
             f"--config.dataset={tmp_path / 'photos'}?size=32&validation_split=0.34",
             "--config.pp_train=flip_lr|value_range(-0.9921875, 1)",
             "--config.batch_size=4", "--config.eval_batch_size=4",
             "--config.num_train_steps=3", "--config.eval_every_steps=3",
             "--config.num_devices=1", "--config.disable_progress_bar=True", timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "init_from imagenet" in out.stdout
  results = json.loads((workdir / "results.json").read_text())
  assert results["eval"]["split"] == "validation"
  assert results["eval"]["num_examples"] == 4  # 34% of 6 per class, rounded: 2 per class
  assert set(results["eval"]["per_class"]) == {"cats", "dogs"}
  out = _cli(f"--workdir={workdir}", "--mode=predict",
             f"--images={tmp_path / 'photos' / 'dogs' / '0.jpg'}", "--top_k=2", timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  preds = json.loads(out.stdout[out.stdout.index("["):])
  assert {t["label"] for t in preds[0]["top_k"]} == {"cats", "dogs"}
