"""Smoke test of ``python -m benchmarks.gan`` at tiny sizes: ours and both Keras peers run the
same DCGAN (same parameter counts) and write complete records. No timing thresholds."""

import json
import math
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import jax
import numpy as np
import pytest

from benchmarks import gan as gan_bench

REQUIRED = ("model", "step", "framework", "batch", "images_per_s", "step_ms_median",
            "compile_s", "flops_per_step", "device", "versions")


def test_gan_benchmark_records(tmp_path):
  pytest.importorskip("tensorflow")
  out = tmp_path / "gan.json"
  records = gan_bench.main(["--batch", "4", "--steps", "1", "--repeats", "2",
                            "--out", str(out)])
  assert json.loads(out.read_text())["records"] == json.loads(json.dumps(records))
  assert [r["framework"] for r in records] == ["jax", "keras_fit", "keras_xla"]
  ours = records[0]
  for rec in records:
    for key in REQUIRED:
      assert key in rec, key
    assert rec["batch"] == 4 and rec["rounds"] == 2
    assert math.isfinite(rec["images_per_s"]) and rec["images_per_s"] > 0
    np.testing.assert_allclose(rec["images_per_s"], 4 / (rec["step_ms_median"] / 1e3))
    assert rec["compile_s"] >= 0
    # The twins have the same trainable parameters as ours.
    assert rec["params_generator"] == ours["params_generator"]
    assert rec["params_discriminator"] == ours["params_discriminator"]
  assert ours["flops_per_step"] > 0 and ours["versions"]["jax"] == jax.__version__
  assert ours["fastest_peer"] in ("keras_fit", "keras_xla") and ours["vs_fastest_peer"] > 0


def test_keras_twin_refuses_configs_it_does_not_mirror():
  pytest.importorskip("tensorflow")
  cfg = gan_bench.settings()
  cfg.discriminator.normalization = "batch"
  with pytest.raises(ValueError, match="spectrally normalised critic"):
    gan_bench.keras_models(cfg)
