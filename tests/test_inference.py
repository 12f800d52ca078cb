"""``jaxvision.inference``: a trained workdir loaded from a script, predictions checked against
the model applied by hand to independently preprocessed pixels."""

import json

import jax
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from jaxvision import inference, tasks
from jaxvision.training import trainer
from train.configs import digits_cnn


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("inference") / "run"
  c = digits_cnn.get_config()
  c.batch_size, c.num_train_steps, c.eval_every_steps = 32, 20, 20
  c.optimizer.warmup_steps = 2
  c.disable_progress_bar = True
  trainer.train(tasks.create_task(c), workdir)
  return workdir


def _stored_digits(n):
  """The first ``n`` sklearn digits as the dataset stores them: uint8 [n, 8, 8, 1]."""
  digits = load_digits()
  return np.round(digits.images[:n] * 255 / 16).astype(np.uint8)[..., None], digits.target[:n]


def test_probabilities_equal_the_model_on_independently_preprocessed_pixels(workdir):
  clf = inference.load_classifier(workdir)
  images, _ = _stored_digits(6)
  assert clf.meta["pp_eval"] == "resize(16)|value_range(0, 1)"
  # The spec by hand: bilinear resize with half-pixel centres, rounded to uint8, then / 255.
  x = jax.image.resize(images.astype(np.float32), (6, 16, 16, 1), "bilinear")
  x = np.clip(np.round(np.asarray(x)), 0, 255) / 255.0
  logits, out = clf.apply_fn(clf.variables, x, train=False)
  want = np.asarray(jax.nn.softmax(np.asarray(logits, np.float64)))
  np.testing.assert_allclose(clf.probabilities(images), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(clf.embed(images), out["pre_logits"], rtol=1e-5, atol=1e-6)
  top = clf.predict(images, top_k=3)
  assert [p["top_k"][0]["class_id"] for p in top] == list(np.argmax(want, 1))
  assert all(len(p["top_k"]) == 3 and "file" not in p for p in top)


def test_files_and_arrays_give_the_same_predictions(workdir, tmp_path):
  clf = inference.load_classifier(workdir, checkpoint="latest")
  images, _ = _stored_digits(3)
  files = []
  for i, image in enumerate(images):
    files.append(str(tmp_path / f"d{i}.png"))
    Image.fromarray(image[..., 0]).save(files[-1])
  from_files = clf.predict(files, top_k=2)
  assert [p["file"] for p in from_files] == files
  for a, b in zip(from_files, clf.predict(images, top_k=2)):
    assert a["top_k"] == b["top_k"]


def test_load_restores_any_task_from_the_workdir(workdir):
  loaded = inference.load(workdir)
  assert loaded.task.name == "classification" and loaded.step == 20
  assert loaded.meta["class_names"] == [str(k) for k in range(10)]


def test_bad_inputs_are_clear_errors(workdir, tmp_path):
  clf = inference.load_classifier(workdir)
  with pytest.raises(ValueError, match=r"expected images \[N, 8, 8, 1\].*found shape \(2, 9, 9\)"):
    clf.probabilities(np.zeros((2, 9, 9), np.uint8))
  (tmp_path / "gan").mkdir()
  (tmp_path / "gan" / "config.json").write_text(json.dumps({"task": "gan"}))
  with pytest.raises(ValueError, match="expected a classification workdir.*'gan'"):
    inference.load_classifier(tmp_path / "gan")
  with pytest.raises(FileNotFoundError, match="no config.json"):
    inference.load(tmp_path / "nothing")
