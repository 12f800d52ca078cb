"""What every TFDS builder of ours over local data shares: a quiet console and content keys.

:class:`LocalBuilder` is the base of our builders that only read local files (digits, IDX,
CIFAR, image folders, Pascal VOC, COCO, Moving-MNIST). Compared with a plain
``tfds.core.GeneratorBasedBuilder`` it

* prints one line of its own when it prepares records ("Preparing records (first use only):
  <dir>") instead of TFDS's "Downloading and preparing dataset Unknown size ..." and
  "Dataset ... downloaded and prepared to ..." (nothing is downloaded);
* takes its per-folder ``BuilderConfig`` without TFDS's "Using custom data configuration:
  <config repr>" warning (a config per folder is how these builders work);
* shows TFDS's progress bars ("Generating splits...", "Shuffling ...") only when stderr is a
  terminal, so logs and pipes get no escape codes.

Nothing process-wide is changed: the progress-bar switch is restored after each
``download_and_prepare``.

:func:`file_stamp` says what identifies a source file's content in a prepared dataset's
config name: small files (annotations, label files) by a hash of their bytes, large ones
(images, image archives) by size and modification time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Iterator

import tensorflow_datasets as tfds
from absl import logging
from tensorflow_datasets.core.utils import tqdm_utils

# Files up to this size are keyed by a hash of their content (an edit that keeps the size and
# lands within the file system's timestamp granularity is still seen); larger files by size
# and mtime_ns (hashing every image of COCO on each load would cost minutes).
HASH_UP_TO_BYTES = 1 << 20


def file_stamp(path: str | os.PathLike, *, hash_up_to: int = HASH_UP_TO_BYTES) -> str:
  """``'<size>:sha256=<16 hex>'`` for a file of at most ``hash_up_to`` bytes, else
  ``'<size>:<mtime_ns>'``: what changes when the file's content changes.

  Raises:
    OSError: the file cannot be read (FileNotFoundError when missing).
  """
  st = os.stat(path)
  if st.st_size <= hash_up_to:
    with open(path, "rb") as f:
      return f"{st.st_size}:sha256={hashlib.sha256(f.read()).hexdigest()[:16]}"
  return f"{st.st_size}:{st.st_mtime_ns}"


def folder_stamps(folder: str | os.PathLike, *, suffixes: tuple[str, ...] | None = None,
                  hash_up_to: int = HASH_UP_TO_BYTES) -> list[str]:
  """``['<name>\\t<file_stamp>', ...]`` of the files directly in ``folder`` (sorted by name;
  only names ending in one of ``suffixes``, any case, when given; hidden files skipped)."""
  out = []
  suffixes = None if suffixes is None else tuple(s.lower() for s in suffixes)
  with os.scandir(folder) as entries:
    for entry in entries:
      if entry.name.startswith(".") or not entry.is_file():
        continue
      if suffixes is not None and not entry.name.lower().endswith(suffixes):
        continue
      out.append(f"{entry.name}\t{file_stamp(entry.path, hash_up_to=hash_up_to)}")
  return sorted(out)


def progress_bars_wanted() -> bool:
  """Whether TFDS's progress bars should show: only when stderr (where tqdm writes) is a
  terminal."""
  try:
    return sys.stderr.isatty()
  except (AttributeError, ValueError):  # replaced or closed stream
    return False


@contextlib.contextmanager
def progress_bars(enable: bool) -> Iterator[None]:
  """TFDS's progress bars on or off inside the block; the previous setting after it."""
  before = getattr(tqdm_utils, "_active", True)  # TFDS has a setter but no getter
  tfds.display_progress_bar(enable)
  try:
    yield
  finally:
    tfds.display_progress_bar(before)


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A ``GeneratorBasedBuilder`` over local files (see the module docstring)."""

  def download_and_prepare(self, *args, **kwargs):
    """TFDS's ``download_and_prepare`` (a no-op once prepared), with progress bars only on a
    terminal."""
    with progress_bars(progress_bars_wanted()):
      return super().download_and_prepare(*args, **kwargs)

  def _create_builder_config(self, builder_config, version):
    # A config made for one folder is not one of the class's BUILDER_CONFIGS: TFDS would
    # warn "Using custom data configuration: <repr>" and otherwise use it as it is.
    if (isinstance(builder_config, tfds.core.BuilderConfig) and self.get_builder_config(
        name=builder_config.name, version=builder_config.version) is None):
      return builder_config
    return super()._create_builder_config(builder_config, version)

  def _log_download_bytes(self) -> None:  # TFDS: "Downloading and preparing dataset ..."
    print(f"Preparing records (first use only): {self.data_dir}", flush=True)

  def _log_download_done(self) -> None:  # TFDS: "Dataset ... downloaded and prepared to ..."
    logging.info("prepared %s in %s", self.name, self.data_dir)
