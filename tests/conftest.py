"""Test configuration.

JAX is given 8 host CPU devices before it initializes, so sharding tests can build meshes of
1 and 8 devices in the same process. Prepared TFDS records go to a fresh directory per test
process. Data under ``$JAXVISION_DATA_DIR`` (default
``../shared/data``) is skipped with a reason when absent, except in CI where it must exist.
"""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# Each test process (pytest-xdist worker) prepares TFDS records in its own directory, so two
# workers never write the same dataset at once and tests never see a user's cache.
os.environ["JAXVISION_TFDS_DIR"] = tempfile.mkdtemp(prefix="jaxvision-tfds-")
atexit.register(shutil.rmtree, os.environ["JAXVISION_TFDS_DIR"], ignore_errors=True)

import jax  # noqa: E402
import pytest  # noqa: E402

# Create JAX's backends now, with the flags above, so that a test which edits XLA_FLAGS (to
# check how the library reads them) cannot change the device count of the tests after it.
jax.devices()

from tests.support import require_data  # noqa: E402


@pytest.fixture
def mnist_dir():
  return require_data("mnist")


@pytest.fixture
def bccd_dir():
  return require_data("bccd/BCCD")


@pytest.fixture
def tiny_coco_dir():
  return require_data("tiny-coco/small_coco")
