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

# One persistent compilation cache per test session, shared by the xdist workers and the CLI
# subprocesses the tests start (they inherit the environment): many tests compile the same
# steps, and most of their time is XLA's compiler. Made by the first process to load this file
# (pytest's controller, before it starts the workers) and removed when that process exits.
if "JAXVISION_TEST_JIT_CACHE" not in os.environ:
  os.environ["JAXVISION_TEST_JIT_CACHE"] = tempfile.mkdtemp(prefix="jaxvision-jit-cache-")
  atexit.register(shutil.rmtree, os.environ["JAXVISION_TEST_JIT_CACHE"], ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["JAXVISION_TEST_JIT_CACHE"]
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"

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
