"""Builder configs keyed by a local data folder.

One builder class can serve many folders (MNIST and Fashion-MNIST are both IDX folders): each
folder becomes its own ``BuilderConfig`` named ``<basename>_<12 hex digits>``, where the digest
covers the absolute path, the content of the required files (``local.file_stamp``: a hash of
each small file such as a label file, size and modification time of larger ones) and the class
names. Prepared records of different folders, of a folder edited in place, or of another
labelling therefore never collide: an edit is prepared again, into a new directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from collections.abc import Sequence

import tensorflow_datasets as tfds

from jaxvision.data import paths
from jaxvision.data.builders import local


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  """A local folder (absolute path), its label names and the ``[H, W, C]`` of its images."""

  folder: str = ""
  class_names: tuple[str, ...] = ()
  image_shape: tuple[int, int, int] = (0, 0, 0)


def check_folder(folder: str | os.PathLike, required: Sequence[str], what: str) -> pathlib.Path:
  """Returns ``folder`` as an absolute path after checking every ``required`` file is there.

  Raises:
    FileNotFoundError: naming the folder and every missing file.
  """
  folder = pathlib.Path(folder).expanduser().resolve()
  if not folder.is_dir():
    raise FileNotFoundError(
        f"{what} folder {folder} does not exist; expected a folder holding {list(required)}")
  missing = [f for f in required if not (folder / f).is_file()]
  if missing:
    raise FileNotFoundError(f"{what} folder {folder} is incomplete: missing {missing} "
                            f"(expected all of {list(required)})")
  return folder


def config_name(path: pathlib.Path, key: Sequence[str]) -> str:
  """``<basename>_<12 hex digits>``: ``path``'s name made lowercase alphanumeric, and the first
  12 hex digits of the sha256 of the lines ``key`` (what identifies the prepared records)."""
  digest = hashlib.sha256("\n".join(key).encode()).hexdigest()[:12]
  base = "".join(c if c.isalnum() else "_" for c in path.name.lower()).strip("_") or "data"
  return f"{base}_{digest}"


def folder_config(folder: pathlib.Path, required: Sequence[str], class_names: Sequence[str],
                  image_shape: tuple[int, int, int], what: str) -> FolderConfig:
  """The ``FolderConfig`` of a checked ``folder`` (see the module docstring for its name)."""
  names = tuple(class_names)
  if not names or len(set(names)) != len(names):
    raise ValueError(f"class_names must be non-empty and unique, got {names}")
  key = [str(folder)] + [f"{f}:{local.file_stamp(folder / f)}" for f in required] + list(names)
  return FolderConfig(
      name=config_name(folder, key),
      description=f"{what} folder {folder}",
      folder=str(folder),
      class_names=names,
      image_shape=tuple(int(d) for d in image_shape),
  )


class FolderBuilder(local.LocalBuilder, skip_registration=True):
  """Base of builders whose data is a local folder given by a :class:`FolderConfig`.

  Features as TFDS's ``mnist``: ``image`` uint8 ``[H, W, C]`` and ``label`` ``ClassLabel``.
  Subclasses define ``name``, ``VERSION``, ``DESCRIPTION``, ``make_config`` and ``load_split``.
  """

  DESCRIPTION = "Images and labels read from the folder {folder}."
  SPLITS = ("train", "test")

  @classmethod
  def from_folder(cls, folder: str | os.PathLike, *, class_names: Sequence[str] | None = None,
                  data_dir: str | os.PathLike | None = None):
    """Returns the (not yet prepared) builder reading ``folder``.

    Args:
      folder: the local data folder.
      class_names: label names; the default depends on the builder.
      data_dir: where prepared records go (default ``paths.tfds_dir()``).

    Raises:
      FileNotFoundError: missing folder or files (all listed). ValueError: corrupt headers.
    """
    config = cls.make_config(folder, class_names)
    return cls(config=config, data_dir=os.fspath(data_dir or paths.tfds_dir()))

  @staticmethod
  def make_config(folder: str | os.PathLike, class_names: Sequence[str] | None) -> FolderConfig:
    """Checks ``folder`` and returns its config (see :func:`folder_config`)."""
    raise NotImplementedError

  @staticmethod
  def load_split(folder: str, split: str):
    """Returns ``(images uint8 [N, H, W, C], labels int [N])`` of ``split`` in ``folder``."""
    raise NotImplementedError

  def folder_config(self) -> FolderConfig:
    config = self.builder_config
    if not isinstance(config, FolderConfig):
      raise ValueError(f"{type(self).__name__} needs a FolderConfig: build it with the module's "
                       "*_builder(folder) function")
    return config

  def feature_dict(self) -> dict[str, tfds.features.FeatureConnector]:
    """``image`` (uint8 ``[H, W, C]``) and ``label``; a subclass may add more."""
    config = self.folder_config()
    return {
        "image": tfds.features.Image(shape=config.image_shape),
        "label": tfds.features.ClassLabel(names=list(config.class_names)),
    }

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION.format(folder=self.folder_config().folder),
        features=tfds.features.FeaturesDict(self.feature_dict()),
        supervised_keys=("image", "label"),
    )

  def check_split(self, split: str, images, labels) -> None:
    """Raises ValueError unless ``images`` match the config's shape and labels its classes."""
    config = self.folder_config()
    if tuple(images.shape[1:]) != tuple(config.image_shape):
      raise ValueError(f"folder {config.folder}: {split} images have shape {images.shape[1:]}, "
                       f"expected {config.image_shape}")
    if len(images) != len(labels):
      raise ValueError(f"folder {config.folder}: {split} has {len(images)} images but "
                       f"{len(labels)} labels")
    num_classes = len(config.class_names)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
      raise ValueError(f"folder {config.folder}: {split} labels span [{labels.min()}, "
                       f"{labels.max()}], out of range for {num_classes} classes; pass "
                       "class_names")

  def _split_generators(self, dl_manager):
    del dl_manager  # Local data only.
    return {split: self._generate_examples(split) for split in self.SPLITS}

  def _generate_examples(self, split: str):
    images, labels = self.load_split(self.folder_config().folder, split)
    self.check_split(split, images, labels)
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label)}
