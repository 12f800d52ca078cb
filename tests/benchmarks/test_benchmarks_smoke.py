"""Smoke test of ``python -m benchmarks.run`` at tiny sizes: the harness runs end to end and
writes complete, finite records. No timing thresholds: figures live in benchmarks/RESULTS.md.
"""

import json
import math
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import jax
import numpy as np
import pytest

from benchmarks import run, specs

REQUIRED = ("model", "step", "framework", "batch", "images_per_s", "step_ms_median",
            "compile_s", "flops_per_step", "device", "versions")


def _positive(v):
  return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def _check_common(rec, batch):
  for key in REQUIRED:
    assert key in rec, f"record lacks {key!r}: {sorted(rec)}"
  assert rec["batch"] == batch
  for key in ("images_per_s", "step_ms_median", "step_ms_q1", "step_ms_q3", "step_ms_min",
              "step_ms_max"):
    assert _positive(rec[key]), (key, rec[key])
  assert rec["step_ms_min"] <= rec["step_ms_median"] <= rec["step_ms_max"]
  np.testing.assert_allclose(rec["images_per_s"], batch / (rec["step_ms_median"] / 1e3))
  assert rec["versions"]["jax"] == jax.__version__


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """One tiny run: SimpleCNN at batch 8, train and predict, JAX and the keras_xla peer."""
  pytest.importorskip("tensorflow")
  out = tmp_path_factory.mktemp("bench") / "r.json"
  run.main(["--models", "simple_cnn", "--batch", "8", "--steps", "2", "--repeats", "2",
            "--kinds", "train,predict", "--peers", "keras_xla", "--peak-n", "256",
            "--num-devices", "1", "--out", str(out)])
  return json.loads(out.read_text())


def test_one_record_per_model_step_and_framework(results):
  assert [(r["model"], r["step"], r["framework"]) for r in results["records"]] == [
      ("simple_cnn", "train", "jax"), ("simple_cnn", "train", "keras_xla"),
      ("simple_cnn", "predict", "jax"), ("simple_cnn", "predict", "keras_xla")]
  assert _positive(results["matmul_peak"]["flops_per_s"])
  assert results["environment"]["versions"]["keras"]
  for rec in results["records"]:
    _check_common(rec, 8)
    assert rec["compile_s"] is not None and rec["compile_s"] >= 0
    assert rec["rounds"] == 2 and rec["steps_per_round"] == 2


def test_jax_records_have_flops_utilisation_and_peer_ratio(results):
  jax_recs = {r["step"]: r for r in results["records"] if r["framework"] == "jax"}
  peers = {r["step"]: r for r in results["records"] if r["framework"] == "keras_xla"}
  for step, rec in jax_recs.items():
    assert _positive(rec["compile_s"]) and _positive(rec["flops_per_step"])
    assert _positive(rec["achieved_flops_per_s"]) and _positive(rec["utilization"])
    assert rec["device"].startswith("cpu")
    assert rec["device_memory"] is None  # XLA:CPU reports no memory statistics.
    assert rec["fastest_peer"] == "keras_xla"
    np.testing.assert_allclose(rec["vs_fastest_peer"],
                               rec["images_per_s"] / peers[step]["images_per_s"])
    assert _positive(rec["vs_fastest_peer_paired_median"])
  # A training step does the forward pass plus more: XLA must count more FLOPs for it.
  assert jax_recs["train"]["flops_per_step"] > jax_recs["predict"]["flops_per_step"]
  assert all(r["flops_per_step"] is None for r in peers.values())


def test_no_peers_parses_to_an_empty_list(tmp_path):
  assert run.parse_args(["--peers", "none", "--out", str(tmp_path / "x.json")]).peers == []


@pytest.mark.parametrize("name", ["simple_cnn", "lenet5", "resnet18_cifar"])
def test_keras_twins_have_the_jax_models_parameter_counts(name):
  pytest.importorskip("tensorflow")
  spec = specs.get_spec(name)
  variables = jax.eval_shape(lambda: spec.make_jax().init(
      jax.random.PRNGKey(0), jax.numpy.zeros((1, *spec.input_shape)), train=False))
  jax_count = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables))
  # Keras counts BatchNorm moving statistics too, as Flax's batch_stats collection.
  assert spec.make_keras().count_params() == jax_count


def test_bad_arguments_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="unknown benchmark model 'resnet19'"):
    run.parse_args(["--models", "resnet19", "--out", str(tmp_path / "x.json")])
  with pytest.raises(SystemExit):
    run.parse_args(["--peers", "torch", "--out", str(tmp_path / "x.json")])
