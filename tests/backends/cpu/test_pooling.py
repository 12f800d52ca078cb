"""``backends.cpu.pooling``: the argmax-workspace max pool and the fused convolution + pool.

References are JAX's own rules (``lax.conv_general_dilated`` and ``flax.linen.max_pool``,
differentiated through ``select_and_scatter``) in float64, and a NumPy loop for the window
positions; ``layers.ConvMaxPool`` (in the backend's form, inside ``cpu.enabled()``, and in
the portable form outside it) against ``nn.Conv`` followed by ``nn.max_pool``.
"""

import contextlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxvision.backends import cpu
from jaxvision.backends.cpu import pooling
from jaxvision.backends.cpu.pooling import pool_with_argmax
from jaxvision.models import layers
from jaxvision.models.layers import ConvMaxPool

DN = ("NHWC", "HWIO", "NHWC")


def _weighted(y):
  return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size)


def _reference(x, w, padding, window):
  z = lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=DN)
  return nn.max_pool(z, window, strides=window)


@pytest.mark.parametrize("size,kernel,padding,window", [
    ((28, 28), (3, 3), "VALID", (2, 2)),
    ((13, 13), (3, 3), "VALID", (2, 2)),             # conv output 11: the last row is cropped
    ((13, 12), (3, 3), "SAME", (2, 2)),              # high padding lowered instead
    ((10, 9), (5, 3), ((2, 1), (0, 2)), (3, 2)),
    ((7, 7), (1, 1), "VALID", (2, 2)),
])
def test_conv_max_pool_matches_conv_then_max_pool_in_float64(size, kernel, padding, window):
  with jax.enable_x64(True), cpu.enabled():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, *size, 4)))
    w = jnp.asarray(rng.normal(size=(*kernel, 4, 5)))
    y = pooling.conv_max_pool(x, w, padding, window)
    y_ref = _reference(x, w, padding, window)
    assert y.shape == y_ref.shape
    np.testing.assert_array_equal(y, y_ref)
    grads = jax.grad(lambda x, w: _weighted(pooling.conv_max_pool(x, w, padding, window)),
                     argnums=(0, 1))(x, w)
    grads_ref = jax.grad(lambda x, w: _weighted(_reference(x, w, padding, window)),
                         argnums=(0, 1))(x, w)
    for a, b in zip(grads, grads_ref):
      assert a.shape == b.shape
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_conv_max_pool_routes_ties_like_max_pool():
  """Through a 1x1 identity kernel the conv output is the (tied) input itself."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(np.round(np.maximum(rng.normal(size=(2, 8, 9, 1)), 0), 1), jnp.float32)
  w = jnp.ones((1, 1, 1, 1), jnp.float32)
  g = jnp.asarray(rng.normal(size=(2, 4, 4, 1)), jnp.float32)
  with cpu.enabled():
    dx = jax.vjp(lambda v: pooling.conv_max_pool(v, w), x)[1](g)[0]
  dx_ref = jax.vjp(lambda v: nn.max_pool(v, (2, 2), strides=(2, 2)), x)[1](g)[0]
  assert float(jnp.sum(x == 0)) > 10  # the data do tie
  np.testing.assert_array_equal(dx, dx_ref)


def test_pool_with_argmax_positions_with_ties_nans_and_infinities():
  rng = np.random.default_rng(2)
  x = np.round(rng.normal(size=(2, 6, 9, 3)), 0).astype(np.float32)  # many ties
  x[0, 0, 0, 0] = x[0, 1, 1, 0] = np.nan                            # two NaNs, one window
  x[1, 2:4, 3:6, 1] = -np.inf                                        # an all -inf window
  y, position = pool_with_argmax(jnp.asarray(x), (2, 3))
  assert position.dtype == jnp.int8
  for b, i, j, c in np.ndindex(*y.shape):
    window = x[b, 2 * i:2 * i + 2, 3 * j:3 * j + 3, c].ravel()
    nans = np.flatnonzero(np.isnan(window))
    expected = nans[0] if nans.size else int(np.argmax(window))  # argmax: first maximum
    assert int(position[b, i, j, c]) == expected, (b, i, j, c)
    np.testing.assert_array_equal(y[b, i, j, c], window[expected])


@pytest.mark.parametrize("backend", [True, False])
def test_conv_max_pool_layer_is_conv_then_pool_with_the_same_parameters(backend):
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 11, 12, 3)), jnp.float32)

  class Reference(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.max_pool(nn.Conv(8, (3, 3), padding="SAME", name="c")(x), (2, 2), (2, 2))

  class Ours(nn.Module):
    @nn.compact
    def __call__(self, x):
      return ConvMaxPool(8, (3, 3), padding="SAME", name="c")(x)

  p_ref = Reference().init(jax.random.PRNGKey(0), x)
  p_ours = Ours().init(jax.random.PRNGKey(0), x)
  assert jax.tree.structure(p_ours) == jax.tree.structure(p_ref)
  for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_ref)):
    np.testing.assert_array_equal(a, b)
  params = jax.tree.map(lambda p: p + 0.3, p_ref)  # a non-zero bias
  with cpu.enabled() if backend else contextlib.nullcontext():
    assert cpu.active() == backend
    np.testing.assert_allclose(Ours().apply(params, x), Reference().apply(params, x),
                               rtol=1e-6, atol=1e-6)
    assert Ours().apply(params, x.astype(jnp.bfloat16)).shape == (2, 5, 6, 8)


def test_conv_max_pool_rejects_bad_inputs():
  x, w = jnp.zeros((1, 8, 8, 3)), jnp.zeros((3, 3, 3, 4))
  with pytest.raises(ValueError, match=r"lhs \[B, H, W, C_in\] and rhs"):
    pooling.conv_max_pool(x[0], w)
  with pytest.raises(ValueError, match=r"lhs \[B, H, W, C_in\] and rhs"):
    pooling.conv_max_pool(x, jnp.zeros((3, 3, 2, 4)))
  with pytest.raises(ValueError, match="padding of at most kernel size - 1"):
    pooling.conv_max_pool(x, w, ((3, 0), (0, 0)))
  with pytest.raises(ValueError, match="larger than the convolution output"):
    pooling.conv_max_pool(x, w, "VALID", (7, 2))
  with pytest.raises(ValueError, match="int8"):
    pool_with_argmax(jnp.zeros((1, 16, 16, 1)), (16, 16))


@pytest.mark.parametrize("backend", [True, False])
def test_global_average_pool_is_the_spatial_mean(backend):
  """``layers.global_average_pool`` in both forms (the backend's dot inside ``cpu.enabled()``)."""
  context = cpu.enabled if backend else contextlib.nullcontext
  with jax.enable_x64(True), context():
    rng = np.random.default_rng(3)
    for shape in ((3, 5, 7, 4), (2, 6, 3)):
      x = rng.normal(size=shape)
      spatial = tuple(range(1, len(shape) - 1))
      out = jax.jit(lambda x: layers.global_average_pool(x))(jnp.asarray(x))
      np.testing.assert_allclose(out, x.mean(axis=spatial), rtol=1e-13, atol=1e-15)
      # Its gradient is the cotangent spread evenly over the positions.
      g = jax.grad(lambda x: jnp.sum(layers.global_average_pool(x) * jnp.arange(shape[-1])))(
          jnp.asarray(x))
      np.testing.assert_allclose(g, np.broadcast_to(np.arange(shape[-1]) / np.prod(
          [shape[a] for a in spatial]), shape), rtol=1e-13)
  with context():
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 7, 7, 8)), jnp.bfloat16)
    out = layers.global_average_pool(x)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32),
                               np.asarray(x, np.float32).mean(axis=(1, 2)), rtol=1e-2, atol=1e-2)
    for shape in ((2, 8), (2, 0, 4, 8)):
      with pytest.raises(ValueError, match=rf"\[batch, \*spatial, channels\] with non-empty "
                                           rf"spatial axes; found shape {re.escape(str(shape))}"):
        layers.global_average_pool(jnp.zeros(shape))
    ints = layers.global_average_pool(jnp.arange(2 * 3 * 2).reshape(2, 3, 2))
    assert ints.dtype == jnp.float32  # as jnp.mean of integers
    np.testing.assert_allclose(ints, np.arange(12).reshape(2, 3, 2).mean(axis=1), rtol=1e-6)


def test_global_average_pool_is_a_dot_on_cpu_only():
  traced = jax.jit(pooling.global_average_pool).trace(jnp.zeros((2, 4, 4, 8)))
  for platform, dot in (("cpu", True), ("cuda", False), ("tpu", False)):
    text = traced.lower(lowering_platforms=(platform,)).as_text()
    assert ("stablehlo.dot_general" in text) == dot, platform
    assert ("stablehlo.reduce" in text) == (not dot), platform
