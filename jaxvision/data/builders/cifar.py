"""CIFAR-10 "python version" folders (``cifar-10-batches-py``) as a TFDS dataset.

The folder holds ``data_batch_1`` .. ``data_batch_5`` (train, 10000 images each), ``test_batch``
(test) and ``batches.meta`` (label names): pickled dicts with ``b'data'`` uint8 ``[N, 3072]``
(the red, green and blue 32x32 planes, each row-major) and ``b'labels'`` (ints 0..9).

The pickles are read with a restricted unpickler that only rebuilds plain containers and NumPy
arrays, so a tampered file cannot run code. Features match TFDS's ``cifar10``: ``image`` uint8
``[32, 32, 3]`` and ``label`` ``ClassLabel``; splits ``train`` and ``test``.

Registered as the dataset ``cifar10`` (``jaxvision.data.get_dataset``): ``data_dir`` if given
(a python-version folder, or a zip of JPEGs as below); else the folder ``cifar10`` under the
data root; else, when that is absent, the zip ``cifar10-jpeg/cifar10-jpeg.zip`` under the data
root (CIFAR-10 re-encoded as one JPEG per image, ``{train,test}/<class>/<NNNN>.jpg``, read in
place by :mod:`jaxvision.data.builders.imagefolder`; pixels differ slightly from the python
version after the lossy round trip); else the TFDS catalog ``cifar10``.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import zipfile
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from jaxvision.data import datasets, paths
from jaxvision.data.builders import folder as folder_lib
from jaxvision.data.builders import imagefolder

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
REQUIRED_FILES = TRAIN_FILES + TEST_FILES + (META_FILE,)
SUBFOLDER = "cifar-10-batches-py"
JPEG_ZIP = ("cifar10-jpeg", "cifar10-jpeg.zip")  # Under the data root.
IMAGE_SHAPE = (32, 32, 3)
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck")

# What a CIFAR pickle may reference: NumPy's array reconstruction and the bytes encoding that
# protocol-2 pickles written by Python 3 use; nothing else.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _RestrictedUnpickler(pickle.Unpickler):

  def find_class(self, module, name):
    if (module, name) in _ALLOWED_GLOBALS:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def read_batch(path: str | os.PathLike) -> dict:
  """Unpickles one CIFAR batch file (bytes keys, as written by Python 2's cPickle).

  Raises:
    ValueError: not a readable CIFAR pickle (path named).
  """
  path = pathlib.Path(path)
  try:
    with open(path, "rb") as f:
      batch = _RestrictedUnpickler(f, encoding="bytes").load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
    raise ValueError(f"{path}: not a CIFAR python batch ({e})") from None
  if not isinstance(batch, dict):
    raise ValueError(f"{path}: not a CIFAR python batch (found a {type(batch).__name__})")
  return batch


def resolve_folder(folder: str | os.PathLike) -> pathlib.Path:
  """``folder`` itself, or its ``cifar-10-batches-py`` subfolder when that exists."""
  folder = pathlib.Path(folder).expanduser()
  return folder / SUBFOLDER if (folder / SUBFOLDER).is_dir() else folder


def load_cifar_split(folder: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads one split: images uint8 ``[N, 32, 32, 3]`` and labels int64 ``[N]``."""
  folder = pathlib.Path(folder)
  images, labels = [], []
  for name in {"train": TRAIN_FILES, "test": TEST_FILES}[split]:
    batch = read_batch(folder / name)
    data, batch_labels = batch.get(b"data"), batch.get(b"labels")
    if data is None or batch_labels is None:
      raise ValueError(f"{folder / name}: expected keys b'data' and b'labels', found "
                       f"{sorted(batch)}")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
      raise ValueError(f"{folder / name}: expected uint8 data [N, 3072], found {data.dtype} "
                       f"{data.shape}")
    if len(batch_labels) != len(data):
      raise ValueError(f"{folder / name}: {len(data)} images but {len(batch_labels)} labels")
    images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    labels.append(np.asarray(batch_labels, np.int64))
  return np.concatenate(images), np.concatenate(labels)


def make_cifar_config(folder: str | os.PathLike,
                      class_names: Sequence[str] | None = None) -> folder_lib.FolderConfig:
  """The config of a CIFAR-10 python folder; names from ``batches.meta`` unless given.

  Raises:
    FileNotFoundError: missing folder or files (all listed). ValueError: unreadable meta file.
  """
  folder = folder_lib.check_folder(resolve_folder(folder), REQUIRED_FILES, "CIFAR-10")
  if class_names is None:
    meta = read_batch(folder / META_FILE)
    class_names = tuple(n.decode() if isinstance(n, bytes) else str(n)
                        for n in meta.get(b"label_names", CLASS_NAMES))
  return folder_lib.folder_config(folder, REQUIRED_FILES, class_names, IMAGE_SHAPE, "CIFAR-10")


class CifarFolder(folder_lib.FolderBuilder):
  """TFDS builder for a ``cifar-10-batches-py`` folder; build it with :func:`cifar_builder`."""

  name = "jaxvision_cifar10"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  DESCRIPTION = "CIFAR-10 read from the python-version folder {folder}."
  make_config = staticmethod(make_cifar_config)
  load_split = staticmethod(load_cifar_split)


# ``cifar_builder(folder, *, class_names=None, data_dir=None)``: ``folder`` is
# ``cifar-10-batches-py`` or holds it; class names default to those in ``batches.meta``.
cifar_builder = CifarFolder.from_folder


def _cifar10_builder(path: str | os.PathLike):
  """The builder of a python-version folder, or of a zip of JPEGs (``{train,test}/<class>``)."""
  if os.path.isfile(path) and zipfile.is_zipfile(path):
    return imagefolder.imagefolder_builder(path, size=IMAGE_SHAPE[:2], class_names=CLASS_NAMES)
  return cifar_builder(path, class_names=CLASS_NAMES)


@datasets.register_dataset("cifar10")
def _resolve_cifar10(name: str, data_dir: str | os.PathLike | None):
  return datasets.local_or_catalog(
      name, data_dir, folder_name="cifar10", make_builder=_cifar10_builder,
      alternatives=[(paths.local_dataset_dir(JPEG_ZIP[0]) / JPEG_ZIP[1], _cifar10_builder)])
