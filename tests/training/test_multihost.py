"""Two JAX processes over loopback (4 CPU devices each) train like one process with 8.

The two processes run ``multihost_worker.py`` by path; both sides train with
``tests.support.train_digits_cnn``.
"""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests import support

REPO = pathlib.Path(__file__).resolve().parents[2]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  port = _free_port()
  procs = []
  for pid in range(2):
    env = dict(os.environ, JAXVISION_TFDS_DIR=str(tmp_path / f"tfds{pid}"),
               PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLA_FLAGS", None)
    procs.append(subprocess.Popen(
        [sys.executable, str(REPO / "tests/training/multihost_worker.py"), str(pid), str(port),
         str(tmp_path / f"p{pid}.npz")], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True))
  for p in procs:
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]

  # This process: 8 local devices, process_count 1.
  flat = support.flat_leaves(support.train_digits_cnn())
  for pid in range(2):
    got = np.load(tmp_path / f"p{pid}.npz")
    assert sorted(got.files) == sorted(flat)
    for name, value in flat.items():
      np.testing.assert_allclose(got[name], value, atol=1e-5, err_msg=name)
