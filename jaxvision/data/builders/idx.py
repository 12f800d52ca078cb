"""IDX folders (MNIST layout) as a TFDS dataset.

An IDX folder holds the four gzip-compressed files of the original MNIST distribution::

  train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
  t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz

(MNIST, Fashion-MNIST, KMNIST use this layout.) The IDX format is a big-endian header: two zero
bytes, a type code (0x08 = uint8), the number of dimensions ``d``, then ``d`` uint32 sizes,
followed by the row-major data.

One builder class serves every folder: each folder is its own ``BuilderConfig`` named
``<basename>_<hash>`` where the hash covers the absolute path, the files' content (a hash of
files up to 1 MiB, such as the label files; size and mtime of larger ones) and the class names (see
:mod:`jaxvision.data.builders.folder`), so MNIST and Fashion-MNIST prepared records never
collide and an edited folder is prepared again. Features match TFDS's
``mnist``: ``image`` uint8 ``[H, W, C]`` (PNG-encoded on disk) and ``label`` ``ClassLabel``.
Splits: ``train`` (from ``train-*``) and ``test`` (from ``t10k-*``).

Registered datasets (``jaxvision.data.get_dataset``): ``mnist`` and ``fashion_mnist`` (the
folders ``mnist`` / ``fashion-mnist`` under the data root or ``data_dir``, else the TFDS
catalog) and ``idx:<folder>`` (any IDX folder).
"""

from __future__ import annotations

import functools
import gzip
import os
import pathlib
import struct
import zlib
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from jaxvision.data import datasets
from jaxvision.data.builders import folder as folder_lib

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
REQUIRED_FILES = tuple(f for pair in SPLIT_FILES.values() for f in pair)

DIGIT_CLASS_NAMES = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# IDX type code -> big-endian NumPy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _open(path: pathlib.Path):
  """Opens ``path`` for reading, transparently decompressing ``.gz``."""
  return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _parse_header(f, path: pathlib.Path) -> tuple[np.dtype, tuple[int, ...]]:
  """Reads the IDX header from the file object ``f``; returns ``(dtype, dims)``."""
  magic = f.read(4)
  if len(magic) < 4:
    raise ValueError(f"{path}: not an IDX file (only {len(magic)} bytes, expected a 4-byte "
                     "magic number)")
  zero0, zero1, type_code, ndim = magic
  if zero0 != 0 or zero1 != 0 or type_code not in _IDX_DTYPES or ndim == 0:
    raise ValueError(
        f"{path}: bad IDX magic number 0x{magic.hex()}: expected 0x0000TTNN with type code TT in "
        f"{sorted(hex(k) for k in _IDX_DTYPES)} and NN >= 1 dimensions")
  raw_dims = f.read(4 * ndim)
  if len(raw_dims) < 4 * ndim:
    raise ValueError(f"{path}: IDX header truncated: expected {ndim} dimension sizes")
  dims = struct.unpack(f">{ndim}I", raw_dims)
  return _IDX_DTYPES[type_code], dims


def read_idx_header(path: str | os.PathLike) -> tuple[np.dtype, tuple[int, ...]]:
  """Returns ``(dtype, dims)`` of the IDX file at ``path`` (``.gz`` or raw) without its data.

  Raises:
    ValueError: if the header is corrupt (bad magic, unknown type code, truncated) or the
      gzip stream is not valid.
  """
  path = pathlib.Path(path)
  try:
    with _open(path) as f:
      return _parse_header(f, path)
  except (gzip.BadGzipFile, EOFError, zlib.error) as e:
    raise ValueError(f"{path}: corrupt gzip stream ({e})") from e


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads the IDX file at ``path`` (``.gz`` or raw) into an array of its header's shape.

  Returns:
    A native-endian array with the dtype and dimensions given by the header (e.g. uint8
    ``[N, 28, 28]`` for MNIST images, uint8 ``[N]`` for labels).

  Raises:
    ValueError: corrupt header or gzip stream, or a data size that does not match the header.
  """
  path = pathlib.Path(path)
  try:
    with _open(path) as f:
      dtype, dims = _parse_header(f, path)
      data = f.read()
  except (gzip.BadGzipFile, EOFError, zlib.error) as e:
    raise ValueError(f"{path}: corrupt gzip stream ({e})") from e
  expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  if len(data) != expected:
    raise ValueError(f"{path}: IDX header says dims {dims} of {dtype} ({expected} bytes) but "
                     f"the file holds {len(data)} data bytes")
  return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``).

  Useful to export data in the MNIST layout or to make small IDX folders for tests. The dtype
  must be one of the IDX types (uint8, int8, int16, int32, float32, float64).
  """
  array = np.asarray(array)
  codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
  dtype = array.dtype.newbyteorder("=")
  if dtype not in codes or array.ndim == 0:
    raise ValueError(f"cannot write {array.dtype} array of shape {array.shape} as IDX")
  header = bytes([0, 0, codes[dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  data = array.astype(_IDX_DTYPES[codes[dtype]], copy=False).tobytes()
  path = pathlib.Path(path)
  with (gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb")) as f:
    f.write(header + data)


def check_idx_folder(folder: str | os.PathLike) -> pathlib.Path:
  """Returns ``folder`` as an absolute path after checking the four IDX files are there.

  Raises:
    FileNotFoundError: naming the folder and every missing file.
  """
  return folder_lib.check_folder(folder, REQUIRED_FILES, "IDX")


def default_class_names(folder: str | os.PathLike) -> tuple[str, ...]:
  """Fashion-MNIST names when the folder's name contains 'fashion', else digits '0'..'9'."""
  if "fashion" in pathlib.Path(folder).name.lower():
    return FASHION_MNIST_CLASS_NAMES
  return DIGIT_CLASS_NAMES


def image_shape_of(folder: str | os.PathLike) -> tuple[int, int, int]:
  """Reads the ``[H, W, C]`` image shape from the train images' IDX header."""
  path = pathlib.Path(folder) / SPLIT_FILES["train"][0]
  dtype, dims = read_idx_header(path)
  if dtype != np.uint8 or len(dims) not in (3, 4):
    raise ValueError(f"{path}: expected uint8 images of dims [N, H, W] or [N, H, W, C], found "
                     f"{dtype} dims {dims}")
  return (dims[1], dims[2], dims[3] if len(dims) == 4 else 1)


def load_idx_split(folder: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads one split of an IDX folder.

  Returns:
    ``(images, labels)``: uint8 ``[N, H, W, C]`` and int64 ``[N]``.

  Raises:
    ValueError: corrupt files, non-uint8 data, or image and label counts that differ.
  """
  folder = pathlib.Path(folder)
  images_file, labels_file = (folder / f for f in SPLIT_FILES[split])
  images = read_idx(images_file)
  labels = read_idx(labels_file)
  if images.dtype != np.uint8 or images.ndim not in (3, 4):
    raise ValueError(f"{images_file}: expected uint8 images [N, H, W(, C)], found "
                     f"{images.dtype} {images.shape}")
  if labels.dtype != np.uint8 or labels.ndim != 1:
    raise ValueError(f"{labels_file}: expected uint8 labels [N], found {labels.dtype} "
                     f"{labels.shape}")
  if images.shape[0] != labels.shape[0]:
    raise ValueError(f"IDX folder {folder}, split {split!r}: {images.shape[0]} images in "
                     f"{images_file.name} but {labels.shape[0]} labels in {labels_file.name}")
  if images.ndim == 3:
    images = images[..., None]
  return images, labels.astype(np.int64)


def make_idx_config(folder: str | os.PathLike,
                    class_names: Sequence[str] | None = None) -> folder_lib.FolderConfig:
  """Builds the config of ``folder`` (see ``folder.folder_config``), checking it is complete.

  Raises:
    FileNotFoundError: missing folder or files (all listed).
    ValueError: corrupt train-images header, bad class names.
  """
  folder = check_idx_folder(folder)
  names = tuple(class_names) if class_names is not None else default_class_names(folder)
  return folder_lib.folder_config(folder, REQUIRED_FILES, names, image_shape_of(folder), "IDX")


class IdxFolder(folder_lib.FolderBuilder):
  """TFDS builder for an IDX folder; build it with :func:`idx_builder`."""

  name = "jaxvision_idx"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  DESCRIPTION = "Images and labels read from the IDX folder {folder}."
  make_config = staticmethod(make_idx_config)
  load_split = staticmethod(load_idx_split)


# ``idx_builder(folder, *, class_names=None, data_dir=None)``: class names default to
# Fashion-MNIST's when the folder name contains 'fashion', else '0'..'9'.
idx_builder = IdxFolder.from_folder


@datasets.register_dataset("mnist")
def _resolve_mnist(name: str, data_dir: str | os.PathLike | None):
  return datasets.local_or_catalog(
      name, data_dir, folder_name="mnist",
      make_builder=functools.partial(idx_builder, class_names=DIGIT_CLASS_NAMES))


@datasets.register_dataset("fashion_mnist")
def _resolve_fashion_mnist(name: str, data_dir: str | os.PathLike | None):
  return datasets.local_or_catalog(
      name, data_dir, folder_name="fashion-mnist",
      make_builder=functools.partial(idx_builder, class_names=FASHION_MNIST_CLASS_NAMES))


@datasets.register_dataset("idx", prefix=True, arg="folder", takes_data_dir=False)
def _resolve_idx_folder(folder: str, data_dir: None):
  del data_dir  # Rejected by get_dataset: records go to paths.tfds_dir().
  builder = datasets.prepare(idx_builder(folder))
  return builder, datasets.info_from_builder(builder, f"idx:{folder}",
                                             builder.builder_config.description)
