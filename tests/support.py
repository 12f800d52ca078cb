"""Helpers shared by tests (importable as ``tests.support``)."""

import os

import pytest

from jaxvision.data import paths


def require_data(name: str):
  """Returns the folder ``name`` under the data root, or skips (fails in CI) if absent."""
  path = paths.local_dataset_dir(name)
  if not path.exists():
    msg = f"dataset folder {path} not found (set ${paths.ENV_VAR} to the shared data root)"
    if os.environ.get("CI"):
      pytest.fail(msg)
    pytest.skip(msg)
  return path
