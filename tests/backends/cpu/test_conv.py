"""``backends.cpu.conv``'s ``conv_general_dilated`` and ``conv_transpose``: forward and both
gradients equal ``lax.conv_general_dilated``'s / ``lax.conv_transpose``'s (JAX's own rules, an
independent derivation) in float64, for the channels-last configurations they handle and for
those passed through; ``layers.ConvTranspose`` in the backend's form is
``flax.linen.ConvTranspose``. Run inside ``cpu.enabled()``, as the library's steps are."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxvision.backends import cpu
from jaxvision.backends.cpu import conv as cpu_conv
from jaxvision.models.layers import Conv, ConvTranspose

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
  with jax.enable_x64(True), cpu.enabled():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, *size, 4)))
    w = jnp.asarray(rng.normal(size=(*kernel, 4, 5)))
    kw = dict(window_strides=stride, padding=padding)
    y, (dx, dw) = _value_and_grads(cpu_conv.conv_general_dilated, x, w, **kw)
    y_ref, (dx_ref, dw_ref) = _value_and_grads(lax.conv_general_dilated, x, w, **kw)
    assert dx.shape == x.shape and dw.shape == w.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", [
    dict(rhs_dilation=(2, 2)), dict(lhs_dilation=(2, 2), padding=((1, 1), (1, 1))),
    dict(padding=((4, 4), (0, 0)))])
def test_other_configurations_pass_through(kw):
  with jax.enable_x64(True), cpu.enabled():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 9, 9, 3)))
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 2)))
    kw = {"window_strides": (1, 1), "padding": "SAME", **kw}
    y, grads = _value_and_grads(cpu_conv.conv_general_dilated, x, w, **kw)
    y_ref, grads_ref = _value_and_grads(lax.conv_general_dilated, x, w, **kw)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    for g, g_ref in zip(grads, grads_ref):
      np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-12)


def test_flax_conv_layer_has_flax_parameters_and_gradients_inside_scan():
  """``layers.Conv`` keeps ``nn.Conv``'s parameter tree; its gradient through a scan equals
  ``nn.Conv``'s (the scan is where the custom gradient matters on XLA:CPU), in the backend's
  form."""
  import flax.linen as nn
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 10, 10, 2))  # [T, B, H, W, C]
  ours, ref = Conv(6, (3, 3), strides=2), nn.Conv(6, (3, 3), strides=2)
  params = ref.init(jax.random.PRNGKey(1), x[0])
  assert jax.tree.structure(ours.init(jax.random.PRNGKey(1), x[0])) == jax.tree.structure(params)

  def loss(params, layer):
    def body(carry, xt):
      return carry + jnp.sum(jnp.tanh(layer.apply(params, xt)) ** 2), None
    return jax.lax.scan(body, 0.0, x)[0]

  with cpu.enabled():
    g = jax.jit(jax.grad(loss), static_argnums=1)(params, ours)
  g_ref = jax.jit(jax.grad(loss), static_argnums=1)(params, ref)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5)


def _transpose_value_and_grads(conv_transpose, x, w, strides, padding):
  def f(x, w):
    y = conv_transpose(x, w, strides, padding)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size), y

  (_, y), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(x, w)
  return y, grads


def _lax_conv_transpose(x, w, strides, padding):
  spatial = "DHW"[-(x.ndim - 2):]
  dn = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
  return lax.conv_transpose(x, w, strides, padding, dimension_numbers=dn)


@pytest.mark.parametrize("size,kernel,stride,padding", [
    ((7, 7), (4, 4), (2, 2), "SAME"),        # the DCGAN generator's upsampling
    ((6, 5), (3, 3), (2, 2), "VALID"),
    ((5, 4), (1, 1), (2, 2), "SAME"),        # some phases meet no kernel tap: zeros
    ((4, 6), (5, 5), (3, 3), "SAME"),
    ((5, 5), (3, 2), (1, 2), ((1, 0), (2, 3))),
    ((6, 6), (4, 3), (2, 2), ((-1, 2), (0, -1))),  # negative padding crops
    ((3, 4, 5), (2, 3, 2), (2, 1, 3), "SAME"),  # 3-d
])
def test_conv_transpose_matches_lax_in_float64(size, kernel, stride, padding):
  with jax.enable_x64(True), cpu.enabled():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, *size, 3)))
    w = jnp.asarray(rng.normal(size=(*kernel, 3, 4)))
    y, (dx, dw) = _transpose_value_and_grads(cpu_conv.conv_transpose, x, w, stride, padding)
    y_ref, (dx_ref, dw_ref) = _transpose_value_and_grads(_lax_conv_transpose, x, w, stride,
                                                         padding)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-12, atol=1e-12)


def test_conv_transpose_bad_padding_is_a_clear_error():
  x, w = jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2))
  with pytest.raises(ValueError, match="padding must be 'SAME', 'VALID' or explicit pairs"):
    cpu_conv.conv_transpose(x, w, (2, 2), "CIRCULAR")


def test_conv_transpose_layer_is_flax_conv_transpose():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 7, 5))
  for kw in (dict(padding="SAME"), dict(padding="VALID", use_bias=False)):
    ours = ConvTranspose(3, (4, 4), strides=(2, 2), **kw)
    flax_layer = nn.ConvTranspose(3, (4, 4), strides=(2, 2), **kw)
    variables = flax_layer.init(jax.random.PRNGKey(1), x)
    mine = ours.init(jax.random.PRNGKey(1), x)
    assert jax.tree.map(jnp.shape, mine) == jax.tree.map(jnp.shape, variables)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(variables)):
      np.testing.assert_array_equal(a, b)  # same initialisers, same names
    with cpu.enabled():
      np.testing.assert_allclose(ours.apply(variables, x), flax_layer.apply(variables, x),
                                 rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match=r"expects inputs \[B, \*2 spatial, C\]"):
    ConvTranspose(3, (4, 4)).init(jax.random.PRNGKey(0), jnp.zeros((7, 7, 5)))


def test_sub_pixel_form_is_staged_for_cpu_only():
  # CPU: one stride-1 convolution per output phase, none over dilated zeros; GPU/TPU: the
  # dilated convolution as lax writes it (lowered without the device, as for export).
  # Traced with XLA's convolutions (float32 on CPU would otherwise go to oneDNN).
  x, w = jnp.ones((2, 7, 7, 3)), jnp.ones((4, 4, 3, 4))
  with cpu.enabled(onednn=False):
    traced = jax.jit(lambda x, w: cpu_conv.conv_transpose(x, w, (2, 2), "SAME")).trace(x, w)
  for platform, count, dilation in (("cpu", 4, "lhs_dilate = [1, 1]"),
                                    ("cuda", 1, "lhs_dilate = [2, 2]"),
                                    ("tpu", 1, "lhs_dilate = [2, 2]")):
    convs = [line for line in traced.lower(lowering_platforms=(platform,)).as_text().splitlines()
             if "stablehlo.convolution" in line]
    assert len(convs) == count, (platform, convs)
    assert all(dilation in line for line in convs), (platform, convs)


def test_moveaxis_stored_is_moveaxis():
  # Below the threshold a plain transpose; from it on, on CPU, the same transpose inside an
  # identity conditional (a fusion barrier): the values are the same either way.
  for shape in ((2, 5, 5, 3), (8, 32, 32, 128)):
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    fn = jax.jit(lambda x: cpu_conv.moveaxis_stored(jnp.maximum(x, 0.25), (0, -1), (-1, 0)))
    np.testing.assert_array_equal(fn(x), np.moveaxis(np.maximum(np.asarray(x), 0.25),
                                                     (0, -1), (-1, 0)))
    barrier = x.size * 4 >= cpu_conv.STORED_MIN_BYTES
    assert ("conditional(" in fn.lower(x).compile().as_text()) == barrier, shape
  # GPU/TPU (lowered without the device): the plain transpose, no runtime predicate.
  traced = fn.trace(x)
  for platform, predicate in (("cpu", True), ("cuda", False), ("tpu", False)):
    text = traced.lower(lowering_platforms=(platform,)).as_text()
    assert ("stablehlo.compare" in text) == predicate, platform


def test_kernel_gradient_through_the_barrier_matches_lax_in_float64():
  # A 4 MiB float64 image produced by an elementwise op (what XLA would otherwise fuse into
  # the layout change): the kernel gradient takes the barrier and still equals lax's.
  with jax.enable_x64(True):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(4, 64, 64, 32)))
    w = jnp.asarray(rng.normal(size=(3, 3, 32, 8)))
    assert x.size * x.dtype.itemsize >= cpu_conv.STORED_MIN_BYTES

    def grads(conv):
      def f(w, x):
        y = conv(jax.nn.relu(x * 1.5 - 0.2), w, (1, 1), "SAME", dimension_numbers=DN)
        return jnp.sum(jnp.sin(y))
      return jax.jit(jax.grad(f))

    ours = grads(cpu_conv.conv_general_dilated)
    with cpu.enabled():
      assert "conditional(" in ours.lower(w, x).compile().as_text()
      np.testing.assert_allclose(ours(w, x), grads(lax.conv_general_dilated)(w, x),
                                 rtol=1e-12, atol=1e-10)


def _depthwise_reference(x, w, stride, pads):
  """NumPy float64 depthwise correlation: out[b, i, j, c] = sum_t x_pad[b, s*i + ti, s*j + tj, c]
  * w[ti, tj, 0, c]."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  kh, kw = w.shape[:2]
  oh = (xp.shape[1] - kh) // stride[0] + 1
  ow = (xp.shape[2] - kw) // stride[1] + 1
  out = np.zeros((x.shape[0], oh, ow, x.shape[3]))
  for i in range(oh):
    for j in range(ow):
      patch = xp[:, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw]
      out[:, i, j] = np.einsum("bhwc,hwc->bc", patch, w[:, :, 0])
  return out


@pytest.mark.parametrize("size,kernel,stride,padding", [
    ((9, 9), (3, 3), (1, 1), "SAME"),
    ((10, 11), (3, 3), (2, 2), "SAME"),    # EfficientNet's stride-2 depthwise, uneven padding
    ((12, 12), (5, 5), (2, 2), "SAME"),
    ((7, 8), (5, 3), (1, 2), "VALID"),
    ((6, 6), (3, 3), (1, 1), ((2, 0), (0, 2))),
])
def test_depthwise_matches_numpy_and_lax_gradients_in_float64(size, kernel, stride, padding):
  with jax.enable_x64(True), cpu.enabled():
    rng = np.random.default_rng(2)
    c = 6
    x = jnp.asarray(rng.normal(size=(2, *size, c)))
    w = jnp.asarray(rng.normal(size=(*kernel, 1, c)))
    kw = dict(window_strides=stride, padding=padding, feature_group_count=c)
    y, (dx, dw) = _value_and_grads(cpu_conv.conv_general_dilated, x, w, **kw)
    y_ref, (dx_ref, dw_ref) = _value_and_grads(lax.conv_general_dilated, x, w, **kw)
    pads = (lax.padtype_to_pads(size, kernel, stride, padding) if isinstance(padding, str)
            else padding)
    np.testing.assert_allclose(y, _depthwise_reference(x, w, stride, pads), rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-12, atol=1e-12)
