"""End-to-end runs of the sequence-prediction trainer on a tiny synthetic Moving-MNIST."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxvision.data import moving_mnist, paths, pipeline
from jaxvision.data.builders.idx import write_idx
from jaxvision.tasks import sequence_prediction
from jaxvision.training import checkpoint as ckpt_lib, optim, state as state_lib, trainer
from train.configs import moving_mnist_convlstm

REPO = pathlib.Path(__file__).resolve().parents[2]
NUM_TRAIN, NUM_TEST, DATA_SEED = 16, 6, 3
NUM_FRAMES, NUM_INPUT, FRAME = 6, 3, 32
EPS = 1e-3  # The documented clipping of the copy-last-frame baseline's BCE.


def _digits(n, seed):
  """Blob-like uint8 digits [n, 28, 28]: a bright random rectangle on black."""
  rng = np.random.default_rng(seed)
  out = np.zeros((n, 28, 28), np.uint8)
  for img in out:
    r, c = rng.integers(2, 14, size=2)
    img[r:r + rng.integers(6, 14), c:c + rng.integers(4, 14)] = rng.integers(100, 256)
  return out


@pytest.fixture(scope="module")
def mnist_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp("seq") / "mnist"
  folder.mkdir()
  write_idx(folder / moving_mnist.TRAIN_IMAGES, _digits(12, 0))
  write_idx(folder / moving_mnist.TEST_IMAGES, _digits(8, 1))
  return folder


@pytest.fixture(scope="module", autouse=True)
def _tfds_dir(tmp_path_factory):
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv(paths.TFDS_ENV_VAR, str(tmp_path_factory.mktemp("seq_tfds")))
    yield


def _config(mnist_folder, **overrides):
  c = moving_mnist_convlstm.get_config()
  c.data.update(num_train=NUM_TRAIN, num_test=NUM_TEST, data_seed=DATA_SEED,
                mnist_dir=str(mnist_folder), num_input_frames=NUM_INPUT, num_frames=NUM_FRAMES,
                frame_size=FRAME)
  c.model.update(stem_features=(4,), hidden_features=(4,))
  c.batch_size = 8
  c.eval_batch_size = 8  # 6 test sequences: one batch with 2 padding rows
  c.num_train_steps = 4
  c.log_every_steps = 1
  c.eval_every_steps = 4
  c.checkpoint_every_steps = 1
  c.optimizer.warmup_steps = 1
  c.num_plot_sequences = 2
  c.disable_progress_bar = True
  for k, v in overrides.items():
    c[k] = v
  return c


def _train(config, workdir):
  return trainer.train(sequence_prediction.SequencePredictionTask(config), workdir)


def _numpy_baselines(mnist_folder):
  """Copy-last-frame MSE/BCE per target frame in float64, from freshly generated sequences."""
  digits = _digits(8, 1)  # what mnist_folder's test file holds
  frames = moving_mnist.generate(digits, NUM_TEST, seed=(DATA_SEED, 1), num_frames=NUM_FRAMES,
                                 frame_size=FRAME).astype(np.float64) / 255.0
  last, targets = frames[:, NUM_INPUT - 1:NUM_INPUT], frames[:, NUM_INPUT:]
  mse = ((last - targets) ** 2).mean(axis=(0, 2, 3, 4))
  p = np.clip(last, EPS, 1 - EPS)
  bce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean(axis=(0, 2, 3, 4))
  blank = (targets ** 2).mean(axis=(0, 2, 3, 4))
  return mse, bce, blank


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, mnist_folder, _tfds_dir):
  """An uninterrupted run of ``_config`` through ``python -m train.main``: (workdir, stdout)."""
  workdir = tmp_path_factory.mktemp("cli") / "run"
  c = _config(mnist_folder)
  overrides = [f"--config.data.{k}={v}" for k, v in c.data.items() if v is not None]
  overrides += ["--config.model.stem_features=(4,)", "--config.model.hidden_features=(4,)"]
  overrides += [f"--config.{k}={c[k]}" for k in (
      "batch_size", "eval_batch_size", "num_train_steps", "log_every_steps", "eval_every_steps",
      "checkpoint_every_steps", "num_plot_sequences", "disable_progress_bar")]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run(
      [sys.executable, "-m", "train.main", "--config=train/configs/moving_mnist_convlstm.py",
       f"--workdir={workdir}", "--config.optimizer.warmup_steps=1", *overrides],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir, out.stdout


def test_cli_writes_results_and_baselines_match_numpy(cli_run, mnist_folder):
  workdir, stdout = cli_run
  assert "test MSE" in stdout
  results = json.loads((workdir / "results.json").read_text())
  ev = results["eval"]
  assert results["steps"] == 4 and ev["num_examples"] == NUM_TEST
  assert results["dataset"]["num_examples"] == {"train": NUM_TRAIN, "test": NUM_TEST}
  for key in ("mse", "bce", "baseline_mse", "baseline_bce"):
    assert np.isfinite(ev[key]), key
  t_out = NUM_FRAMES - NUM_INPUT
  assert len(ev["per_frame_mse"]) == len(ev["per_frame_baseline_mse"]) == t_out
  assert ev["mse"] == pytest.approx(np.mean(ev["per_frame_mse"]), rel=1e-9)
  assert ev["bce"] > ev["mse"] > 0  # per-pixel BCE >= squared error in [0, 1]

  mse, bce, blank = _numpy_baselines(mnist_folder)
  np.testing.assert_allclose(ev["per_frame_baseline_mse"], mse, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(ev["per_frame_baseline_bce"], bce, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(ev["per_frame_blank_mse"], blank, rtol=1e-5, atol=1e-7)
  assert ev["baseline_mse"] == pytest.approx(mse.mean(), rel=1e-5)
  assert ev["baseline_bce"] == pytest.approx(bce.mean(), rel=1e-5)

  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r["kind"] == "eval"] == [4]
  assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  for png in ("curves.png", "predictions.png"):
    assert (workdir / "plots" / png).stat().st_size > 5000


class _Crash(RuntimeError):
  pass


def _final_params(workdir, config):
  """Parameters of the workdir's latest checkpoint, restored into a freshly built state."""
  ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", async_save=False)
  try:
    step = ckpt.latest_step()
    meta = ckpt.read_meta(step)
    model = sequence_prediction.create_model(config, NUM_FRAMES - NUM_INPUT)
    tx, _ = optim.make_optimizer(config.optimizer, config.num_train_steps)
    # An abstract target (nothing compiled or allocated) placed on one device.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
        jax.eval_shape(lambda: state_lib.create_train_state(
            model, tx, input_shape=meta["input_shape"], rng=jax.random.PRNGKey(1))))
    state = ckpt.restore(step, target, meta, check_keys=sequence_prediction.SequencePredictionTask.check_keys)
    return step, jax.device_get(state.params)
  finally:
    ckpt.close()


def test_resumed_run_matches_uninterrupted_run(cli_run, tmp_path, mnist_folder, monkeypatch):
  config = _config(mnist_folder)
  full_dir = cli_run[0]
  full = json.loads((full_dir / "results.json").read_text())

  real = pipeline.make_array_train_iterator

  def crashing(*args, **kwargs):
    start = kwargs.get("start_step", 0)
    for i, batch in enumerate(real(*args, **kwargs)):
      if start + i >= 3:
        raise _Crash(f"simulated crash before step {start + i + 1}")
      yield batch

  monkeypatch.setattr(pipeline, "make_array_train_iterator", crashing)
  with pytest.raises(_Crash):
    _train(config, tmp_path / "resumed")
  monkeypatch.undo()
  resumed = _train(config, tmp_path / "resumed")

  assert resumed["resumed_from_step"] == 3 and resumed["steps"] == full["steps"] == 4
  step_full, p_full = _final_params(full_dir, config)
  step_res, p_res = _final_params(tmp_path / "resumed", config)
  assert step_full == step_res == 4
  for a, b in zip(jax.tree_util.tree_leaves(p_full), jax.tree_util.tree_leaves(p_res)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  for key in ("per_frame_mse", "per_frame_bce"):
    np.testing.assert_allclose(resumed["eval"][key], full["eval"][key], rtol=1e-6)


def test_bad_settings_are_clear_errors(tmp_path, mnist_folder):
  with pytest.raises(ValueError, match="num_output_frames=5 but the data has 3 target frames"):
    c = _config(mnist_folder)
    c.model.num_output_frames = 5
    _train(c, tmp_path / "a")
  with pytest.raises(ValueError, match="builder_config must be one of"):
    c = _config(mnist_folder)
    c.data.builder_config = "huge"
    _train(c, tmp_path / "b")
