"""A digits demo run through the CLI, shared by the CLI tests of this folder (one training)."""

import pytest

from tests.support import run_cli


@pytest.fixture(scope="session")
def digits_demo_run(tmp_path_factory):
  """``(workdir, tfds_dir, CompletedProcess)`` of the digits demo for 2 steps, its records
  prepared in a fresh folder (stdout and stderr are pipes, not a terminal)."""
  root = tmp_path_factory.mktemp("demo")
  workdir, tfds_dir = root / "run", root / "tfds"
  out = run_cli("--config=train/configs/digits_cnn.py", f"--workdir={workdir}",
                "--config.num_train_steps=2", "--config.eval_every_steps=2", tfds_dir=tfds_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir, tfds_dir, out
