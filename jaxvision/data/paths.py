"""Where local datasets live.

Datasets are read by path, never copied into the repository. The root is
``$JAXVISION_DATA_DIR`` when set, else ``../shared/data`` relative to the repository root
(the folder that holds ``pyproject.toml`` and ``jaxvision/``).
"""

from __future__ import annotations

import os
import pathlib

ENV_VAR = "JAXVISION_DATA_DIR"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def data_root() -> pathlib.Path:
  """Returns the local data root: ``$JAXVISION_DATA_DIR`` or ``<repo>/../shared/data``."""
  env = os.environ.get(ENV_VAR)
  if env:
    return pathlib.Path(env).expanduser().resolve()
  return (REPO_ROOT / ".." / "shared" / "data").resolve()


def local_dataset_dir(name: str) -> pathlib.Path:
  """Returns ``data_root() / name`` (it may not exist)."""
  return data_root() / name


TFDS_ENV_VAR = "JAXVISION_TFDS_DIR"


def tfds_dir() -> pathlib.Path:
  """Where our local-data TFDS builders write prepared records.

  ``$JAXVISION_TFDS_DIR`` when set, else ``~/.cache/jaxvision/tensorflow_datasets``.
  """
  env = os.environ.get(TFDS_ENV_VAR)
  if env:
    return pathlib.Path(env).expanduser().resolve()
  return pathlib.Path("~/.cache/jaxvision/tensorflow_datasets").expanduser()
