"""The CIFAR-10 python-folder builder on a small synthetic folder written here."""

import os
import pickle
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxvision import data
from jaxvision.data import paths
from jaxvision.data.builders import cifar

PER_BATCH, TEST_N = 3, 4


def _planes(images):
  """CIFAR row layout: the 1024 red values, then green, then blue, each row-major."""
  return np.stack([np.concatenate([im[:, :, c].ravel() for c in range(3)]) for im in images])


def _write_batch(path, images, labels):
  batch = {b"batch_label": b"synthetic", b"labels": [int(x) for x in labels],
           b"data": _planes(images), b"filenames": [b"x.png"] * len(labels)}
  with open(path, "wb") as f:
    pickle.dump(batch, f, protocol=2)


def make_folder(root):
  folder = root / "cifar-10-batches-py"
  folder.mkdir(parents=True)
  rng = np.random.default_rng(0)
  written = {}
  for split, names, n in (("train", cifar.TRAIN_FILES, PER_BATCH), ("test", cifar.TEST_FILES, TEST_N)):
    all_images, all_labels = [], []
    for name in names:
      images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
      labels = rng.integers(0, 10, n)
      _write_batch(folder / name, images, labels)
      all_images.append(images)
      all_labels.append(labels)
    written[split] = (np.concatenate(all_images), np.concatenate(all_labels))
  with open(folder / "batches.meta", "wb") as f:
    pickle.dump({b"label_names": [n.encode() for n in cifar.CLASS_NAMES],
                 b"num_cases_per_batch": PER_BATCH}, f, protocol=2)
  return folder, written


def test_builder_reads_the_written_examples(tmp_path):
  folder, written = make_folder(tmp_path / "cifar10")
  builder = cifar.cifar_builder(tmp_path / "cifar10", data_dir=tmp_path / "tfds")
  assert builder.builder_config.folder == str(folder.resolve())
  builder.download_and_prepare()
  assert builder.info.features["label"].names == list(cifar.CLASS_NAMES)
  for split, (images, labels) in written.items():
    got = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    assert got["image"].shape == (len(labels), 32, 32, 3)
    # Match stored (shuffled) examples to written ones by their bytes.
    index = {im.tobytes(): i for i, im in enumerate(images)}
    order = [index[im.tobytes()] for im in got["image"]]
    assert sorted(order) == list(range(len(labels)))
    np.testing.assert_array_equal(got["label"], labels[order])


def test_get_dataset_cifar10_from_local_folder(tmp_path, monkeypatch):
  make_folder(tmp_path / "root" / "cifar10")
  monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "root"))
  monkeypatch.setenv(paths.TFDS_ENV_VAR, str(tmp_path / "tfds"))
  _, info = data.get_dataset("cifar10")
  assert info.num_examples == {"train": 5 * PER_BATCH, "test": TEST_N}
  assert info.image_shape == (32, 32, 3) and info.class_names[0] == "airplane"
  assert info.source.startswith("CIFAR-10 folder ") and info.source.endswith("cifar-10-batches-py")


def test_python_folder_comes_before_the_jpeg_zip(tmp_path, monkeypatch):
  make_folder(tmp_path / "root" / "cifar10")
  (tmp_path / "root" / "cifar10-jpeg").mkdir()
  zipfile.ZipFile(tmp_path / "root" / "cifar10-jpeg" / "cifar10-jpeg.zip", "w").close()
  monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "root"))
  _, info = data.get_dataset("cifar10")
  assert info.source.startswith("CIFAR-10 folder ")
  assert info.num_examples == {"train": 5 * PER_BATCH, "test": TEST_N}


def test_incomplete_folder_lists_missing_files(tmp_path):
  folder, _ = make_folder(tmp_path / "c")
  os.remove(folder / "data_batch_3")
  os.remove(folder / "batches.meta")
  with pytest.raises(FileNotFoundError, match=r"missing \['data_batch_3', 'batches.meta'\]"):
    data.get_dataset("cifar10", data_dir=tmp_path / "c")


class _Evil:

  def __reduce__(self):
    return (os.system, ("echo pwned",))


def test_pickles_cannot_run_code(tmp_path):
  path = tmp_path / "data_batch_1"
  with open(path, "wb") as f:
    pickle.dump({b"data": _Evil(), b"labels": []}, f, protocol=2)
  with pytest.raises(ValueError, match="not allowed"):
    cifar.read_batch(path)
