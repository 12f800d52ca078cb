"""Test configuration.

JAX is given 8 host CPU devices before it initializes, so sharding tests can build meshes of
1 and 8 devices in the same process. Data under ``$JAXVISION_DATA_DIR`` (default
``../shared/data``) is skipped with a reason when absent, except in CI where it must exist.
"""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from jaxvision.data import paths  # noqa: E402


def require_data(name: str):
  """Returns the folder ``name`` under the data root, or skips (fails in CI) if absent."""
  path = paths.local_dataset_dir(name)
  if not path.exists():
    msg = f"dataset folder {path} not found (set ${paths.ENV_VAR} to the shared data root)"
    if os.environ.get("CI"):
      pytest.fail(msg)
    pytest.skip(msg)
  return path


@pytest.fixture
def mnist_dir():
  return require_data("mnist")


@pytest.fixture
def bccd_dir():
  return require_data("bccd/BCCD")


@pytest.fixture
def tiny_coco_dir():
  return require_data("tiny-coco/small_coco")
