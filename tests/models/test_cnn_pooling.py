"""SimpleCNN's pooling order against independent references, in both of the layers' forms.

SimpleCNN pools before the ReLU (``layers.ConvMaxPool``), and the CPU backend replaces
``nn.max_pool``'s gradient; values and gradients must stay those of the textbook formulation
(Keras, flax's own layers), with the backend (inside ``cpu.enabled()``) and without. The max
pool itself is tested in ``tests/backends/cpu/test_max_pool.py``.
"""

import contextlib
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import models
from jaxvision.backends import cpu


@pytest.mark.parametrize("backend", [True, False])
def test_simple_cnn_gradients_match_keras_with_same_weights(backend):
  keras = pytest.importorskip("keras")
  tf = pytest.importorskip("tensorflow")
  from benchmarks import keras_models
  model = models.SimpleCNN(num_classes=10)
  rng = np.random.default_rng(3)
  x = rng.normal(size=(4, 28, 28, 1)).astype(np.float32)
  labels = rng.integers(0, 10, 4)
  params = model.init(jax.random.PRNGKey(5), jnp.asarray(x), train=False)["params"]
  kmodel = keras_models.simple_cnn((28, 28, 1), 10)
  order = ["Conv_0", "Conv_1", "Dense_0", "Dense_1"]
  for layer, name in zip([l for l in kmodel.layers if l.weights], order):
    layer.set_weights([np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"])])

  def loss(p):
    logits, _ = model.apply({"params": p}, x, train=False)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

  with cpu.enabled() if backend else contextlib.nullcontext():
    grads = jax.grad(loss)(params)
  with tf.GradientTape() as tape:
    kloss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, kmodel(x))
  kgrads = tape.gradient(kloss, kmodel.trainable_weights)
  expected = [g.numpy() for g in kgrads]
  ours = [np.asarray(grads[n][k]) for n in order for k in ("kernel", "bias")]
  for a, b in zip(ours, expected):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


class _TextbookSimpleCNN(nn.Module):
  """SimpleCNN in the textbook order: conv + bias -> ReLU -> max pool (flax's own ops)."""
  padding: str = "VALID"

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    for features in (32, 64):
      x = nn.max_pool(nn.relu(nn.Conv(features, (3, 3), padding=self.padding)(x)), (2, 2),
                      strides=(2, 2))
    x = nn.relu(nn.Dense(64)(x.reshape((x.shape[0], -1))))
    return nn.Dense(10)(x), {}


@pytest.mark.parametrize("backend", [True, False])
@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_simple_cnn_equals_the_textbook_order_with_nonzero_biases(padding, backend):
  """Same parameter tree and initial values as conv -> ReLU -> pool built from nn.Conv and
  nn.max_pool; with random (also negative) biases, equal logits and gradients."""
  ours, ref = models.SimpleCNN(num_classes=10, padding=padding), _TextbookSimpleCNN(padding)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 28, 28, 1)), jnp.float32)
  p_ours = ours.init(jax.random.PRNGKey(1), x, train=False)["params"]
  p_ref = ref.init(jax.random.PRNGKey(1), x, train=False)["params"]
  assert jax.tree.structure(p_ours) == jax.tree.structure(p_ref)
  for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_ref)):
    np.testing.assert_array_equal(a, b)
  keys = iter(jax.random.split(jax.random.PRNGKey(2), 8))
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(next(keys), p.shape), p_ref)

  def loss(model):
    return lambda p: jnp.sum(jnp.sin(model.apply({"params": p}, x, train=False)[0]))

  with cpu.enabled() if backend else contextlib.nullcontext():
    np.testing.assert_allclose(ours.apply({"params": params}, x, train=False)[0],
                               ref.apply({"params": params}, x, train=False)[0],
                               rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(jax.grad(loss(ours))(params)),
                    jax.tree.leaves(jax.grad(loss(ref))(params))):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
