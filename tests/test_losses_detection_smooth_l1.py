"""smooth_l1_loss against a float64 NumPy reference (torchvision's definition)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import losses


def _reference(pred, target, beta):
  x = np.abs(pred.astype(np.float64) - target.astype(np.float64))
  if beta == 0:
    return x
  return np.where(x < beta, 0.5 * x * x / beta, x - 0.5 * beta)


@pytest.mark.parametrize("beta", [1.0 / 9.0, 1.0, 0.0])
def test_matches_numpy(beta):
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(7, 4)).astype(np.float32)
  target = pred + rng.normal(size=(7, 4)).astype(np.float32) * np.array([0.01, 0.1, 1.0, 3.0],
                                                                         np.float32)
  got = losses.smooth_l1_loss(jnp.asarray(pred), jnp.asarray(target), beta=beta)
  assert got.shape == (7, 4) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), _reference(pred, target, beta), rtol=1e-5,
                             atol=1e-7)


def test_hand_values_and_finite_gradient():
  beta = 0.5
  pred = jnp.array([0.0, 0.25, -0.25, 2.0, -3.0])
  # 0; 0.5 * 0.0625 / 0.5 = 0.0625 (both signs); 2 - 0.25 = 1.75; 3 - 0.25 = 2.75.
  np.testing.assert_allclose(np.asarray(losses.smooth_l1_loss(pred, 0.0, beta=beta)),
                             [0.0, 0.0625, 0.0625, 1.75, 2.75], rtol=1e-6)
  grad = jax.grad(lambda p: losses.smooth_l1_loss(p, 0.0, beta=beta).sum())(pred)
  # d/dx: x / beta inside, sign(x) outside.
  np.testing.assert_allclose(np.asarray(grad), [0.0, 0.5, -0.5, 1.0, -1.0], rtol=1e-6)


def test_negative_beta_is_an_error():
  with pytest.raises(ValueError, match="beta >= 0"):
    losses.smooth_l1_loss(jnp.zeros(2), jnp.zeros(2), beta=-1.0)
