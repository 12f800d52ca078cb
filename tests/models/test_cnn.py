"""CNN classifiers: shapes, parameter counts, and outputs against Keras with the same weights."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import models


def _init(model, shape, seed=0):
  return model.init(jax.random.PRNGKey(seed), jnp.zeros(shape), train=False)


def _num_params(model, shape):
  variables = jax.eval_shape(lambda: _init(model, shape))
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables["params"]))


@pytest.mark.parametrize("name,kwargs,shape,pre", [
    ("SimpleCNN", {}, (2, 28, 28, 1), 64),
    ("LeNet5", {}, (2, 28, 28, 1), 84),
    ("LeNet5", {}, (2, 32, 32, 1), 84),
    ("VGG11", {"batch_norm": True}, (2, 32, 32, 3), 512),
    ("ResNet18", {"stem": "cifar"}, (2, 32, 32, 3), 512),
    ("ResNet50", {"stem": "cifar", "num_filters": 8}, (2, 32, 32, 3), 256),
])
def test_output_contract(name, kwargs, shape, pre):
  model = models.create_model(name, num_classes=7, **kwargs)
  variables = _init(model, shape)
  logits, out = model.apply(variables, jnp.ones(shape), train=False)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert out["pre_logits"].shape == (2, pre)
  assert np.all(np.isfinite(np.asarray(logits)))


def test_resnet_stage_features():
  model = models.ResNet18(num_classes=10, stem="imagenet")
  x = jnp.zeros((1, 64, 64, 3))
  _, out = model.apply(_init(model, x.shape), x, train=False)
  assert [out[f"stage_{i}"].shape for i in range(1, 5)] == [
      (1, 16, 16, 64), (1, 8, 8, 128), (1, 4, 4, 256), (1, 2, 2, 512)]


@pytest.mark.parametrize("name,expected", [
    # torchvision's published parameter counts for the same architectures (1000 classes).
    ("ResNet18", 11_689_512), ("ResNet34", 21_797_672), ("ResNet50", 25_557_032),
])
def test_resnet_parameter_counts_match_torchvision(name, expected):
  assert _num_params(models.create_model(name, num_classes=1000), (1, 224, 224, 3)) == expected


def test_vgg16_parameter_count_matches_paper():
  model = models.VGG16(num_classes=1000, classifier_width=4096)
  assert _num_params(model, (1, 224, 224, 3)) == 138_357_544


def test_batchnorm_updates_only_in_train_mode():
  model = models.ResNet18(num_classes=3, stem="cifar")
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
  variables = _init(model, x.shape)
  _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  before = jax.tree_util.tree_leaves(variables["batch_stats"])
  after = jax.tree_util.tree_leaves(updates["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_dropout_is_active_only_in_training():
  model = models.SimpleCNN(num_classes=10, dropout_rate=0.5)
  x = jax.random.normal(jax.random.PRNGKey(2), (4, 28, 28, 1))
  variables = _init(model, x.shape)
  eval1, _ = model.apply(variables, x, train=False)
  eval2, _ = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(eval1, eval2)
  tr1, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
  tr2, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  assert not np.allclose(tr1, tr2)


def test_bfloat16_compute_keeps_float32_params():
  model = models.SimpleCNN(num_classes=10, dtype=jnp.bfloat16)
  x = jnp.ones((2, 28, 28, 1))
  variables = _init(model, x.shape)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
  logits, _ = model.apply(variables, x, train=False)
  ref, _ = models.SimpleCNN(num_classes=10).apply(variables, x, train=False)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, ref, atol=0.05, rtol=0.05)


def test_wrong_input_rank_is_a_clear_error():
  model = models.SimpleCNN(num_classes=10)
  with pytest.raises(ValueError, match=r"\[batch, height, width, channels\].*\(28, 28\)"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((28, 28)), train=False)


def test_vgg_rejects_indivisible_sizes():
  with pytest.raises(ValueError, match="divisible by 32"):
    _init(models.VGG11(num_classes=10), (1, 28, 28, 1))


def test_unknown_model_name():
  with pytest.raises(ValueError, match="unknown model 'ResNet19'.*ResNet18"):
    models.create_model("ResNet19")


def _keras_simple_cnn(keras, num_classes):
  layers = keras.layers
  return keras.Sequential([
      keras.Input((28, 28, 1)),
      layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2),
      layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
      layers.Flatten(), layers.Dense(64, activation="relu"), layers.Dense(num_classes)])


def test_simple_cnn_matches_keras_with_same_weights():
  keras = pytest.importorskip("keras")
  model = models.SimpleCNN(num_classes=10)
  x = np.random.default_rng(0).normal(size=(3, 28, 28, 1)).astype(np.float32)
  params = _init(model, x.shape, seed=3)["params"]
  kmodel = _keras_simple_cnn(keras, 10)
  order = ["Conv_0", "Conv_1", "Dense_0", "Dense_1"]
  weighted = [l for l in kmodel.layers if l.weights]
  for layer, name in zip(weighted, order):
    layer.set_weights([np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"])])
  expected = kmodel(x).numpy()
  logits, _ = model.apply({"params": params}, x, train=False)
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-5)


def test_lenet_matches_keras_with_same_weights():
  keras = pytest.importorskip("keras")
  layers = keras.layers
  model = models.LeNet5(num_classes=10)
  x = np.random.default_rng(1).normal(size=(2, 28, 28, 1)).astype(np.float32)
  params = _init(model, x.shape, seed=4)["params"]
  kmodel = keras.Sequential([
      keras.Input((28, 28, 1)),
      layers.Conv2D(6, 5, padding="same", activation="relu"), layers.AveragePooling2D(2),
      layers.Conv2D(16, 5, activation="relu"), layers.AveragePooling2D(2), layers.Flatten(),
      layers.Dense(120, activation="relu"), layers.Dense(84, activation="relu"),
      layers.Dense(10)])
  names = ["Conv_0", "Conv_1", "Dense_0", "Dense_1", "Dense_2"]
  for layer, name in zip([l for l in kmodel.layers if l.weights], names):
    layer.set_weights([np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"])])
  logits, _ = model.apply({"params": params}, x, train=False)
  np.testing.assert_allclose(np.asarray(logits), kmodel(x).numpy(), rtol=1e-4, atol=1e-5)



def test_resnet_v1_options_keep_names_and_add_conv_biases():
  """Keras's v1 variant: same module names as the default, plus a bias on every conv."""
  x = jnp.zeros((1, 64, 64, 3))
  base = jax.eval_shape(lambda: _init(models.ResNet50(num_classes=5), x.shape))["params"]
  v1 = jax.eval_shape(lambda: _init(models.ResNet50(
      num_classes=5, stride_in_1x1=True, conv_bias=True, bn_epsilon=1.001e-5,
      stem_pool_padding=((1, 1), (1, 1))), x.shape))["params"]
  flat = lambda t: {k for k, _ in jax.tree_util.tree_flatten_with_path(t)[0]}
  extra = {jax.tree_util.keystr(k) for k in flat(v1) - flat(base)}
  assert flat(base) <= flat(v1)
  assert len(extra) == 53 and all(e.endswith("['bias']") for e in extra)  # 53 convs


def test_resnet_stride_in_1x1_needs_bottlenecks():
  with pytest.raises(ValueError, match="stride_in_1x1=True needs bottleneck blocks"):
    _init(models.ResNet18(num_classes=3, stride_in_1x1=True), (1, 32, 32, 3))


def test_headless_models_return_pre_logits():
  x = jnp.ones((2, 64, 64, 3))
  for model, width in ((models.VGG11(num_classes=None), 2 * 2 * 512),
                       (models.ResNet18(num_classes=None), 512)):
    variables = _init(model, x.shape)
    assert not any("Dense" in k for k in variables["params"])
    first, out = model.apply(variables, x, train=False)
    assert first.shape == (2, width)
    np.testing.assert_array_equal(first, out["pre_logits"])
