"""Every ```python block of README.md runs, each in a fresh interpreter, so examples cannot rot.

Blocks run in order in one scratch directory, with the repository on ``PYTHONPATH`` and the
data root of the tests, as a user would run them: without the tests' 8 virtual CPU devices
(eight device threads on two cores can miss XLA:CPU's 40 s all-reduce rendezvous while the
other test worker is busy; the sharded paths have tests of their own).
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from tests.support import require_data

REPO = pathlib.Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(),
                    flags=re.DOTALL | re.MULTILINE)


def test_readme_has_python_examples():
  assert len(BLOCKS) >= 3


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path):
  if any("bccd/BCCD" in block for block in BLOCKS):
    require_data("bccd/BCCD")  # skips outside CI when the data root is absent
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=" ".join(
      f for f in os.environ.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count")))
  for i, block in enumerate(BLOCKS):
    out = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (f"README python block {i + 1} failed:\n{block}\n"
                                 f"{out.stderr[-3000:]}")
