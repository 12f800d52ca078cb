"""TFDS builders of our own for local data.

Classification: :mod:`digits` (scikit-learn's handwritten digits) and :mod:`idx`
(MNIST-layout IDX folders). Detection builders live beside them (``voc``, ``coco``).
"""

import importlib
import importlib.util
import sys


def _provide_importlib_resources() -> None:
  """Lets TFDS 4.9.x prepare datasets when the ``importlib_resources`` backport is absent.

  ``DatasetBuilder.code_path`` (used by ``download_and_prepare``) refers to
  ``importlib_resources.abc.Traversable``; recent ``etils`` no longer installs that backport.
  The standard library's ``importlib.resources`` (Python >= 3.11) has the same ``abc``, so
  it stands in when the backport is missing. No effect when the backport is installed.
  """
  if "importlib_resources" in sys.modules:
    return
  if importlib.util.find_spec("importlib_resources") is None:
    sys.modules["importlib_resources"] = importlib.import_module("importlib.resources")
    importlib.import_module("importlib.resources.abc")


_provide_importlib_resources()

# pylint: disable=g-import-not-at-top,wrong-import-position
from jaxvision.data.builders.cifar import CifarFolder, cifar_builder
from jaxvision.data.builders.digits import Digits, digits_builder
from jaxvision.data.builders.folder import FolderConfig
from jaxvision.data.builders.idx import IdxFolder, idx_builder, read_idx, write_idx
