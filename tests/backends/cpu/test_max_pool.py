"""jaxvision.ops.max_pool (custom VJP without select_and_scatter) against flax's nn.max_pool."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.ops import max_pool


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

  np.testing.assert_allclose(max_pool(x, window, strides, padding),
                             nn.max_pool(x, window, strides, padding), rtol=0)
  np.testing.assert_allclose(jax.jit(jax.grad(ours))(x), jax.jit(jax.grad(reference))(x),
                             rtol=1e-6, atol=1e-6)
