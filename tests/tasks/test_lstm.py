"""The ``mnist_lstm`` config through the classification trainer, and the LSTM benchmark."""

import json

import jax
import numpy as np

from benchmarks import lstm as lstm_bench
from jaxvision import data
from jaxvision.data import pipeline
from jaxvision.tasks import classification
from jaxvision.training import trainer
from tests.support import np_stacked
from train.configs import mnist_lstm

FEATURES = 8


def _tiny_config():
  """``mnist_lstm`` with its model and pipeline, on the embedded 8x8 digits resized to 28x28."""
  c = mnist_lstm.get_config()
  c.dataset = "digits"
  c.pp_train = "resize(28)|" + c.pp_train
  c.pp_eval = "resize(28)|" + c.pp_eval
  c.model.features = FEATURES
  c.batch_size = 32
  c.eval_batch_size = 120  # 360 test digits in 3 batches
  c.num_train_steps = 3
  c.log_every_steps = 1
  c.eval_every_steps = 3
  c.disable_progress_bar = True
  return c


def test_mnist_lstm_trains_and_its_accuracy_matches_a_numpy_lstm(tmp_path):
  config = _tiny_config()
  results = trainer.train(classification.ClassificationTask(config), tmp_path)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["steps"] == 3 and saved["config"]["model"]["name"] == "RowLSTMClassifier"
  assert saved["eval"]["num_examples"] == 360
  accuracy = saved["eval"]["accuracy"]
  assert accuracy == results["eval"]["accuracy"]

  # Independent check: a float64 NumPy biLSTM on the restored parameters classifies the same
  # preprocessed test images.
  state = trainer.restore(classification.ClassificationTask(config), tmp_path, "latest").state
  params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                                  jax.device_get(state.params))
  builder, info = data.get_dataset("digits")
  correct = count = 0
  for batch in pipeline.make_eval_iterator(builder, info, split="test", global_batch_size=120,
                                           pp=config.pp_eval):
    for image, label, valid in zip(batch["image"], batch["label"], batch["mask"]):
      if not valid:
        continue
      rows = image.reshape(28, 28).astype(np.float64)
      _, last = np_stacked("lstm", params["encoder"], rows, 28, FEATURES, 2, True)
      logits = last @ params["head"]["kernel"] + params["head"]["bias"]
      correct += int(np.argmax(logits) == label)
      count += 1
  assert count == 360
  assert abs(correct / count - accuracy) <= 1 / 360 + 1e-9  # at most one near-tie flips


def test_benchmark_smoke(tmp_path):
  out = tmp_path / "lstm.json"
  records = lstm_bench.main(["--batch", "8", "--steps", "2", "--repeats", "1", "--features",
                             str(FEATURES), "--out", str(out)])
  assert json.loads(out.read_text()) == records
  assert [r["framework"] for r in records] == ["jax", "keras-fit", "keras-tf-xla"]
  for r in records:
    assert {"model", "step", "framework", "batch", "images_per_s", "step_ms_median",
            "compile_s", "flops_per_step", "device"} <= set(r)
    assert r["batch"] == 8 and r["images_per_s"] > 0 and r["compile_s"] >= 0
  # Same model size on both sides: Flax's LSTM cell and Keras's LSTM both have 4H(F + H) + 4H
  # parameters per direction; 2 bidirectional layers of 8 units on 28 features + Dense(10).
  expected_params = 2 * (32 * (28 + 8) + 32) + 2 * (32 * (16 + 8) + 32) + 16 * 10 + 10
  assert {r["params"] for r in records} == {expected_params}
  # Analytic FLOPs: 3 x forward matmuls (2 per multiply-add), by hand for this size.
  forward = 2 * 28 * 2 * 8 * (28 + 8) * 32 + 2 * 28 * 2 * 8 * (16 + 8) * 32 + 2 * 8 * 16 * 10
  assert {r["flops_per_step"] for r in records} == {3 * forward}
