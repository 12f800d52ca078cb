"""``ops.max_pool`` and SimpleCNN's pooling order against independent references.

The library replaces ``nn.max_pool``'s gradient (XLA's select_and_scatter, slow on CPU) and
pools before the ReLU in SimpleCNN; values and gradients must stay those of the textbook
formulation: TensorFlow's max pooling for untied inputs, a NumPy float64 loop for ties.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import models
from jaxvision.ops import max_pool


def _np_max_pool_grad(x, g, window, strides, pads):
  """float64 reference: each output's gradient goes to its window's first (row-major) max."""
  x = np.pad(x.astype(np.float64), ((0, 0), *pads, (0, 0)), constant_values=-np.inf)
  (kh, kw), (sh, sw) = window, strides
  out_h, out_w = g.shape[1:3]
  y = np.empty(g.shape)
  dx = np.zeros(x.shape)
  for b in range(x.shape[0]):
    for i in range(out_h):
      for j in range(out_w):
        for c in range(x.shape[3]):
          win = x[b, i * sh:i * sh + kh, j * sw:j * sw + kw, c]
          k = int(np.argmax(win))  # First occurrence in row-major order.
          y[b, i, j, c] = win.flat[k]
          dx[b, i * sh + k // kw, j * sw + k % kw, c] += g[b, i, j, c]
  (top, bottom), (left, right) = pads
  return y, dx[:, top:x.shape[1] - bottom, left:x.shape[2] - right]


@pytest.mark.parametrize("shape,window,strides,padding,pads", [
    ((2, 8, 8, 3), (2, 2), (2, 2), "VALID", ((0, 0), (0, 0))),
    ((2, 9, 7, 2), (2, 2), (2, 2), "VALID", ((0, 0), (0, 0))),   # floor: last row unused
    ((2, 7, 9, 2), (3, 3), (2, 2), "SAME", ((1, 1), (1, 1))),    # overlapping, padded
    ((1, 6, 6, 2), (3, 2), (1, 2), ((1, 0), (0, 1)), ((1, 0), (0, 1))),
])
def test_max_pool_matches_first_max_reference_with_ties(shape, window, strides, padding, pads):
  rng = np.random.default_rng(0)
  # ReLU-like data rounded to one decimal: many ties (zeros and equal positives).
  x = np.round(np.maximum(rng.normal(size=shape), 0), 1).astype(np.float32)
  y, vjp = jax.vjp(lambda v: max_pool(v, window, strides, padding), jnp.asarray(x))
  g = rng.normal(size=y.shape).astype(np.float32)
  y_ref, dx_ref = _np_max_pool_grad(x, g, window, strides, pads)
  np.testing.assert_array_equal(np.asarray(y), y_ref.astype(np.float32))
  np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(g))[0]), dx_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("window,strides,padding", [
    ((2, 2), (2, 2), "VALID"), ((3, 3), (2, 2), "SAME"), ((2, 2), (1, 1), "SAME")])
def test_max_pool_matches_tensorflow(window, strides, padding):
  tf = pytest.importorskip("tensorflow")
  x = np.random.default_rng(1).normal(size=(2, 11, 10, 4)).astype(np.float32)  # no ties
  y, vjp = jax.vjp(lambda v: max_pool(v, window, strides, padding), jnp.asarray(x))
  g = np.random.default_rng(2).normal(size=y.shape).astype(np.float32)
  tx = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(tx)
    ty = tf.nn.max_pool2d(tx, window, strides, padding)
  np.testing.assert_array_equal(np.asarray(y), ty.numpy())
  np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(g))[0]),
                             tape.gradient(ty, tx, output_gradients=tf.constant(g)).numpy(),
                             rtol=1e-6, atol=1e-6)


def test_max_pool_rejects_bad_windows():
  with pytest.raises(ValueError, match="2-D window"):
    max_pool(jnp.zeros((1, 4, 4, 1)), (2, 2, 2), (2, 2, 2))
  with pytest.raises(ValueError, match="larger than the padded input"):
    max_pool(jnp.zeros((1, 2, 2, 1)), (3, 3), (1, 1))


def test_simple_cnn_gradients_match_keras_with_same_weights():
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


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_simple_cnn_equals_the_textbook_order_with_nonzero_biases(padding):
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

  np.testing.assert_allclose(ours.apply({"params": params}, x, train=False)[0],
                             ref.apply({"params": params}, x, train=False)[0],
                             rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(jax.grad(loss(ours))(params)),
                  jax.tree.leaves(jax.grad(loss(ref))(params))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
