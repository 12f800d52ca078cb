"""The handwritten digits scikit-learn ships, as a TFDS dataset (no network needed).

``sklearn.datasets.load_digits()``: 1797 grey 8x8 images of the digits 0-9 (UCI optical
recognition of handwritten digits, test part), pixel values 0..16.

Features match TFDS's ``mnist``: ``image`` uint8 ``[8, 8, 1]`` with values
``round(v * 255 / 16)`` (0..16 -> 0..255, round half to even, so 8 -> 128) and ``label``
``ClassLabel`` named '0'..'9'.

Splits (deterministic, stratified by label):
``train_test_split(indices, test_size=0.2, stratify=target, random_state=0)`` gives
``train``: 1437 examples, ``test``: 360 examples.

Registered as the dataset ``digits`` (``jaxvision.data.get_dataset('digits')``).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from jaxvision.data import datasets, paths
from jaxvision.data.builders import local

CLASS_NAMES = tuple(str(i) for i in range(10))
IMAGE_SHAPE = (8, 8, 1)
TEST_SIZE = 0.2
SPLIT_SEED = 0
NUM_EXAMPLES = {"train": 1437, "test": 360}


def load_digits_splits() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Returns ``{split: (images uint8 [N, 8, 8, 1], labels int64 [N], sklearn indices [N])}``."""
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top

  digits = sk_datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int64)
  indices = np.arange(len(labels))
  train_idx, test_idx = model_selection.train_test_split(
      indices, test_size=TEST_SIZE, stratify=labels, random_state=SPLIT_SEED)
  return {
      split: (images[idx], labels[idx], idx)
      for split, idx in (("train", train_idx), ("test", test_idx))
  }


class Digits(local.LocalBuilder):
  """scikit-learn's 8x8 handwritten digits: train 1437 / test 360 (stratified, seed 0)."""

  name = "jaxvision_digits"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=IMAGE_SHAPE),
            "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Local data only.
    splits = load_digits_splits()
    return {name: self._generate_examples(*arrays) for name, arrays in splits.items()}

  def _generate_examples(self, images, labels, indices):
    # Keyed by the index in sklearn's array, so the stored order is deterministic.
    for image, label, index in zip(images, labels, indices):
      yield int(index), {"image": image, "label": int(label)}


def digits_builder(*, data_dir: str | os.PathLike | None = None) -> Digits:
  """Returns the (not yet prepared) digits builder writing to ``data_dir`` or ``paths.tfds_dir()``."""
  return Digits(data_dir=os.fspath(data_dir or paths.tfds_dir()))


@datasets.register_dataset("digits", takes_data_dir=False)
def _resolve_digits(name: str, data_dir: None):
  del data_dir  # Rejected by get_dataset: records go to paths.tfds_dir().
  builder = datasets.prepare(digits_builder())
  return builder, datasets.info_from_builder(builder, name, "sklearn digits")
