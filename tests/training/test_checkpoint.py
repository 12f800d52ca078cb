"""Orbax checkpointing: round trip, retention of latest N plus best, mismatch errors."""

import jax
import ml_collections
import numpy as np
import pytest

from jaxvision import models
from jaxvision.training import checkpoint, optim, state as state_lib


def _state(num_classes=10, seed=0, shape=(28, 28, 1)):
  tx, _ = optim.make_optimizer(ml_collections.ConfigDict(
      {"name": "adamw", "learning_rate": 1e-3, "schedule": "constant"}), 10)
  return state_lib.create_train_state(models.SimpleCNN(num_classes=num_classes), tx,
                                      input_shape=shape, rng=jax.random.PRNGKey(seed))


META = {"model": "SimpleCNN", "num_classes": 10, "input_shape": [28, 28, 1]}


def test_round_trip_restores_every_leaf(tmp_path):
  state = _state(seed=1)
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(3, state, META)
  ckpt.close()
  ckpt = checkpoint.Checkpointer(tmp_path)
  assert ckpt.latest_step() == 3
  restored = ckpt.restore(3, _state(seed=2), META)
  ckpt.close()
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_keeps_latest_n_plus_best(tmp_path):
  state = _state()
  ckpt = checkpoint.Checkpointer(tmp_path, keep=2, best_metric="accuracy", best_mode="max")
  for step, acc in zip(range(1, 6), [0.5, 0.9, 0.6, 0.7, 0.65]):
    ckpt.save(step, state, META, metrics={"accuracy": acc})
  ckpt.save(6, state, META)  # a periodic save without metrics
  ckpt.wait()
  assert sorted(ckpt.all_steps()) == [2, 5, 6]
  assert ckpt.best_step() == 2
  ckpt.close()


def test_an_unranked_save_logs_no_orbax_warning(tmp_path, caplog):
  """A save between evaluations has no metrics on purpose: Orbax's "Requested `tracked_metric`;
  did not provide metrics." is not logged for it, and other warnings still are."""
  from absl import logging as absl_logging
  ckpt = checkpoint.Checkpointer(tmp_path, best_metric="accuracy")
  with caplog.at_level("WARNING", logger="absl"):
    ckpt.save(1, _state(), META)
    ckpt.save(2, _state(), META, metrics={"accuracy": 0.5})
    ckpt.wait()
    absl_logging.warning("Requested `tracked_metric`; did not provide metrics.")
  ckpt.close()
  assert [r.getMessage() for r in caplog.records] == [
      "Requested `tracked_metric`; did not provide metrics."]  # ours, after the saves
  assert sorted(ckpt.all_steps()) == [1, 2]


def test_restoring_another_class_count_names_the_mismatch(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(1, _state(num_classes=10), META)
  ckpt.wait()
  target = _state(num_classes=5)
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"num_classes: this run has 5, "
                     r"the checkpoint has 10"):
    ckpt.restore(1, target, dict(META, num_classes=5))
  # Even with matching meta, array shapes are compared before reading.
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"params/Dense_1/kernel: the model expects shape \(64, 5\), "
                           r"the checkpoint has \(64, 10\)"):
    ckpt.restore(1, target, META)
  ckpt.close()


def test_restoring_another_input_shape_is_refused(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(1, _state(), META)
  ckpt.wait()
  with pytest.raises(checkpoint.CheckpointMismatchError, match="input_shape"):
    ckpt.restore(1, _state(shape=(32, 32, 1)), dict(META, input_shape=[32, 32, 1]))
  ckpt.close()
