"""``backends.cpu.pooling.max_pool`` (custom VJP without select_and_scatter) against flax's
``nn.max_pool`` and independent references (TensorFlow's max pooling for untied inputs, a
NumPy float64 loop for ties), reached as the models reach it: ``layers.max_pool`` inside
``cpu.enabled()``."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.backends import cpu
from jaxvision.models.layers import max_pool


@pytest.mark.parametrize("window,strides,padding,shape", [
    ((2, 2), (2, 2), "VALID", (2, 9, 8, 3)),
    ((3, 3), (2, 2), "SAME", (2, 11, 10, 2)),
    ((3, 3), (1, 1), "VALID", (1, 7, 7, 1)),
])
def test_values_and_gradients_match_flax(window, strides, padding, shape):
  rng = np.random.default_rng(0)
  x = rng.normal(size=shape).astype(np.float32)
  x[0, :2, :2, 0] = 1.5  # ties inside a window
  ct = rng.normal(size=nn.max_pool(jnp.asarray(x), window, strides, padding).shape)

  def ours(a):
    return jnp.vdot(max_pool(a, window, strides, padding), ct)

  def reference(a):
    return jnp.vdot(nn.max_pool(a, window, strides, padding), ct)

  with cpu.enabled():
    np.testing.assert_allclose(max_pool(x, window, strides, padding),
                               nn.max_pool(x, window, strides, padding), rtol=0)
    np.testing.assert_allclose(jax.jit(jax.grad(ours))(x), jax.jit(jax.grad(reference))(x),
                               rtol=1e-6, atol=1e-6)


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
  with cpu.enabled():
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
  with cpu.enabled():
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
  with cpu.enabled(), pytest.raises(ValueError, match="2-D window"):
    max_pool(jnp.zeros((1, 4, 4, 1)), (2, 2, 2), (2, 2, 2))
  with cpu.enabled(), pytest.raises(ValueError, match="larger than the padded input"):
    max_pool(jnp.zeros((1, 2, 2, 1)), (3, 3), (1, 1))
