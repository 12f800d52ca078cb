"""The scikit-learn digits builder: split sizes, stratification, determinism, pixel values."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn import datasets as sk_datasets
from sklearn import model_selection

from jaxvision.data.builders import digits


def _load(data_dir):
  builder = digits.digits_builder(data_dir=data_dir)
  builder.download_and_prepare()
  return builder, {s: tfds.as_numpy(builder.as_dataset(split=s, batch_size=-1))
                   for s in ("train", "test")}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  return _load(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def reference():
  """Expected splits, computed here: pixels floor(v * 255 / 16 + 0.5), same split call."""
  d = sk_datasets.load_digits()
  images = np.floor(d.images.astype(np.float64) * 255.0 / 16.0 + 0.5).astype(np.uint8)
  train, test = model_selection.train_test_split(
      np.arange(len(d.target)), test_size=0.2, stratify=d.target, random_state=0)
  return {"train": (images[train], d.target[train]), "test": (images[test], d.target[test])}, d


def _sorted_rows(images, labels):
  rows = np.concatenate([labels.reshape(-1, 1).astype(np.int64),
                         images.reshape(len(labels), -1).astype(np.int64)], axis=1)
  return rows[np.lexsort(rows.T[::-1])]


def test_split_sizes_and_features(prepared):
  builder, data = prepared
  assert {s: v.num_examples for s, v in builder.info.splits.items()} == {"train": 1437, "test": 360}
  assert data["train"]["image"].shape == (1437, 8, 8, 1)
  assert data["test"]["image"].shape == (360, 8, 8, 1)
  assert data["train"]["image"].dtype == np.uint8
  assert builder.info.features["label"].names == [str(i) for i in range(10)]


def test_stratified_per_class_counts(prepared, reference):
  _, data = prepared
  _, d = reference
  total = np.bincount(d.target, minlength=10)
  train = np.bincount(data["train"]["label"], minlength=10)
  test = np.bincount(data["test"]["label"], minlength=10)
  np.testing.assert_array_equal(train + test, total)
  # Stratified: each class's test share is 20% up to rounding.
  assert np.all(np.abs(test - 0.2 * total) <= 1.0), (test, 0.2 * total)


def test_images_equal_sklearn_scaled(prepared, reference):
  _, data = prepared
  expected, _ = reference
  for split in ("train", "test"):
    images = data[split]["image"][..., 0]
    assert images.min() == 0 and images.max() == 255
    allowed = {int(np.floor(v * 255 / 16 + 0.5)) for v in range(17)}
    assert set(np.unique(images).tolist()) <= allowed
    np.testing.assert_array_equal(_sorted_rows(images, data[split]["label"]),
                                  _sorted_rows(*expected[split]))


def test_two_builds_identical(prepared, tmp_path):
  _, first = prepared
  _, second = _load(tmp_path / "again")
  for split in ("train", "test"):
    for key in ("image", "label"):
      np.testing.assert_array_equal(first[split][key], second[split][key])
