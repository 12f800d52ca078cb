"""``ops.conv_general_dilated``: forward and both gradients equal ``lax.conv_general_dilated``'s
(JAX's own transpose rules, an independent derivation) in float64, for the channels-last
configurations it handles and for those it passes through."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxvision import ops
from jaxvision.models.layers import Conv

DN = ("NHWC", "HWIO", "NHWC")


def _value_and_grads(conv, x, w, **kw):
  def f(x, w):
    y = conv(x, w, dimension_numbers=DN, **kw)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size), y

  (_, y), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(x, w)
  return y, grads


@pytest.mark.parametrize("size,kernel,stride,padding", [
    ((28, 28), (3, 3), (1, 1), "VALID"),
    ((13, 12), (3, 3), (1, 1), "SAME"),
    ((32, 32), (3, 3), (2, 2), "SAME"),
    ((7, 9), (4, 4), (2, 2), "SAME"),       # even kernel, odd size: uneven padding
    ((9, 9), (1, 1), (2, 2), "VALID"),      # 1x1 projection with stride
    ((10, 11), (7, 7), (2, 2), ((3, 3), (3, 3))),
    ((5, 5), (3, 3), (3, 3), "VALID"),      # stride drops the last input rows
    ((8, 8), (5, 3), (1, 2), ((0, 4), (2, 1))),
])
def test_forward_and_gradients_match_lax_in_float64(size, kernel, stride, padding):
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, *size, 4)))
    w = jnp.asarray(rng.normal(size=(*kernel, 4, 5)))
    kw = dict(window_strides=stride, padding=padding)
    y, (dx, dw) = _value_and_grads(ops.conv_general_dilated, x, w, **kw)
    y_ref, (dx_ref, dw_ref) = _value_and_grads(lax.conv_general_dilated, x, w, **kw)
    assert dx.shape == x.shape and dw.shape == w.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", [
    dict(rhs_dilation=(2, 2)), dict(lhs_dilation=(2, 2), padding=((1, 1), (1, 1))),
    dict(padding=((4, 4), (0, 0)))])
def test_other_configurations_pass_through(kw):
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 9, 9, 3)))
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 2)))
    kw = {"window_strides": (1, 1), "padding": "SAME", **kw}
    y, grads = _value_and_grads(ops.conv_general_dilated, x, w, **kw)
    y_ref, grads_ref = _value_and_grads(lax.conv_general_dilated, x, w, **kw)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    for g, g_ref in zip(grads, grads_ref):
      np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-12)


def test_flax_conv_layer_has_flax_parameters_and_gradients_inside_scan():
  """``layers.Conv`` keeps ``nn.Conv``'s parameter tree; its gradient through a scan equals
  ``nn.Conv``'s (the scan is where the custom gradient matters on XLA:CPU)."""
  import flax.linen as nn
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 10, 10, 2))  # [T, B, H, W, C]
  ours, ref = Conv(6, (3, 3), strides=2), nn.Conv(6, (3, 3), strides=2)
  params = ref.init(jax.random.PRNGKey(1), x[0])
  assert jax.tree.structure(ours.init(jax.random.PRNGKey(1), x[0])) == jax.tree.structure(params)

  def loss(params, layer):
    def body(carry, xt):
      return carry + jnp.sum(jnp.tanh(layer.apply(params, xt)) ** 2), None
    return jax.lax.scan(body, 0.0, x)[0]

  g = jax.jit(jax.grad(loss), static_argnums=1)(params, ours)
  g_ref = jax.jit(jax.grad(loss), static_argnums=1)(params, ref)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5)
