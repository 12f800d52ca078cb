"""Compiled train/eval steps over 1 and 8 CPU devices."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxvision import models
from jaxvision.tasks import classification as steps
from jaxvision.training import jit, optim, sharding, state as state_lib


def _batches(n, batch=16, shape=(12, 12, 1), k=4, seed=0):
  rng = np.random.default_rng(seed)
  return [{"image": rng.normal(size=(batch, *shape)).astype(np.float32),
           "label": rng.integers(0, k, batch).astype(np.int32)} for _ in range(n)]


def _train(model, opt_name, num_devices, batches):
  mesh = sharding.make_mesh(num_devices)
  cfg = ml_collections.ConfigDict({"name": opt_name, "learning_rate": 0.05 if opt_name == "sgd"
                                   else 3e-3, "schedule": "constant", "weight_decay": 1e-4})
  tx, _ = optim.make_optimizer(cfg, 10)
  state = state_lib.create_train_state(model, tx, input_shape=batches[0]["image"].shape[1:],
                                       rng=jax.random.PRNGKey(0), mesh=mesh)
  step = jit.jit_train_step(steps.make_train_step(label_smoothing=0.1), mesh)
  losses = []
  for b in batches:
    state, m = step(state, sharding.shard_batch(b, mesh))
    losses.append(float(m["loss"]))
  return jax.device_get(state), losses


@pytest.mark.parametrize("model_fn,opt", [
    (lambda: models.SimpleCNN(num_classes=4, padding="SAME", dropout_rate=0.2), "sgd"),
    (lambda: models.SimpleCNN(num_classes=4, padding="SAME"), "adamw"),
    (lambda: models.ResNet(stage_sizes=(1, 1), num_classes=4, num_filters=8, stem="cifar"), "sgd"),
])
def test_one_and_eight_devices_give_the_same_parameters(model_fn, opt):
  assert jax.device_count() == 8, "conftest should give JAX 8 CPU devices"
  batches = _batches(4)
  s1, l1 = _train(model_fn(), opt, 1, batches)
  s8, l8 = _train(model_fn(), opt, 8, batches)
  np.testing.assert_allclose(l1, l8, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves((s1.params, s1.batch_stats)),
                  jax.tree_util.tree_leaves((s8.params, s8.batch_stats))):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def _sgd_cnn_on_8_devices(seed=0):
  """``(mesh, model, state)``: a 4-class SimpleCNN for 12x12x1 images, SGD, over 8 devices."""
  mesh = sharding.make_mesh(8)
  model = models.SimpleCNN(num_classes=4, padding="SAME")
  tx, _ = optim.make_optimizer(ml_collections.ConfigDict(
      {"name": "sgd", "learning_rate": 0.1, "schedule": "constant"}), 1)
  state = state_lib.create_train_state(model, tx, input_shape=(12, 12, 1),
                                       rng=jax.random.PRNGKey(seed), mesh=mesh)
  return mesh, model, state


def test_train_step_output_is_sharded_replicated_and_state_donated():
  mesh, model, state = _sgd_cnn_on_8_devices()
  batch = sharding.shard_batch(_batches(1)[0], mesh)
  assert batch["image"].sharding.spec == sharding.batch_sharding(mesh).spec
  old_kernel = state.params["Dense_1"]["kernel"]
  step = jit.jit_train_step(steps.make_train_step(), mesh)
  new_state, _ = step(state, batch)
  assert old_kernel.is_deleted()  # donated
  assert new_state.params["Dense_1"]["kernel"].sharding.is_fully_replicated
  assert int(new_state.step) == 1


def test_eval_step_ignores_padded_examples():
  mesh, model, state = _sgd_cnn_on_8_devices()
  b = _batches(1)[0]
  mask = np.arange(16) < 11
  garbage = dict(b, image=np.where(mask[:, None, None, None], b["image"], 1e6), mask=mask)
  eval_step = jit.jit_eval_step(steps.make_eval_step(4), mesh)
  out = jax.device_get(eval_step(state, sharding.shard_batch(garbage, mesh)))
  assert int(out["count"]) == 11 and out["confusion_matrix"].sum() == 11
  logits, _ = model.apply({"params": state.params}, b["image"][:11], train=False)
  logp = jax.nn.log_softmax(logits)
  expected = -np.take_along_axis(np.asarray(logp), b["label"][:11, None], 1).sum()
  np.testing.assert_allclose(float(out["loss_sum"]), expected, rtol=1e-5)


def test_flip_tta_eval_step_averages_the_probabilities_of_image_and_mirror():
  """Against float64 NumPy on the model's two separate outputs; padded examples excluded."""
  mesh, model, state = _sgd_cnn_on_8_devices(seed=3)
  b = _batches(1, seed=5)[0]
  mask = np.arange(16) < 13
  batch = dict(b, image=np.where(mask[:, None, None, None], b["image"], 1e6), mask=mask)
  out = jax.device_get(jit.jit_eval_step(steps.make_eval_step(4, flip_tta=True), mesh)(
      state, sharding.shard_batch(batch, mesh)))
  single = jax.device_get(jit.jit_eval_step(steps.make_eval_step(4), mesh)(
      state, sharding.shard_batch(batch, mesh)))

  def probs(images):
    logits = np.asarray(model.apply({"params": state.params}, images, train=False)[0],
                        np.float64)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  x, y = b["image"][:13], b["label"][:13]
  p = (probs(x) + probs(x[:, :, ::-1])) / 2
  np.testing.assert_allclose(float(out["loss_sum"]), -np.log(p[np.arange(13), y]).sum(),
                             rtol=1e-5)
  expected_cm = np.zeros((4, 4), int)
  np.add.at(expected_cm, (y, p.argmax(-1)), 1)
  np.testing.assert_array_equal(out["confusion_matrix"], expected_cm)
  assert int(out["count"]) == 13
  assert abs(float(out["loss_sum"]) - float(single["loss_sum"])) > 1e-3  # the mirror counted


def test_batch_size_must_split_over_devices():
  with pytest.raises(ValueError, match="batch_size=12 must be divisible by the 8 devices"):
    sharding.check_batch_size(12, sharding.make_mesh(8))


def test_epoch_step_equals_the_loop_of_train_steps_over_its_permutation():
  """One compiled epoch (``lax.scan``) = the per-batch steps over the same shuffled order,
  dropping the ``N % batch_size`` remainder."""
  model = models.SimpleCNN(num_classes=4, padding="SAME", dropout_rate=0.2)
  tx, _ = optim.make_optimizer(ml_collections.ConfigDict(
      {"name": "adam", "learning_rate": 3e-3, "schedule": "constant"}), 10)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(37, 12, 12, 1)).astype(np.float32)
  labels = rng.integers(0, 4, 37).astype(np.int32)
  key = jax.random.PRNGKey(7)

  def fresh():
    return state_lib.create_train_state(model, tx, input_shape=(12, 12, 1),
                                        rng=jax.random.PRNGKey(0))

  train_step = steps.make_train_step()
  epoch = jax.jit(steps.make_epoch_step(train_step, batch_size=8))
  s_epoch, m_epoch = epoch(fresh(), images, labels, key)

  order = np.asarray(jax.random.permutation(key, 37))[:32].reshape(4, 8)
  s_loop, losses = fresh(), []
  step = jax.jit(train_step)
  for idx in order:
    s_loop, m = step(s_loop, {"image": images[idx], "label": labels[idx]})
    losses.append(float(m["loss"]))
  assert int(s_epoch.step) == int(s_loop.step) == 4
  np.testing.assert_allclose(float(m_epoch["loss"]), np.mean(losses), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s_epoch.params), jax.tree.leaves(s_loop.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="at least batch_size=64 examples, got 37"):
    jax.jit(steps.make_epoch_step(train_step, batch_size=64))(fresh(), images, labels, key)
