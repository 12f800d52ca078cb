"""GAN losses against float64 NumPy written here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import losses as gan_losses

REAL = np.array([2.0, -1.0, 0.5, 0.0, 3.0])
FAKE = np.array([-2.0, 1.5, 0.0])  # a different batch size on purpose
HUGE_REAL = np.array([1e4, -1e4, 80.0, -80.0, 0.0])
HUGE_FAKE = np.array([1e4, -1e4, 200.0])


def ref_softplus(x):
  """log(1 + e^x) in float64, stable for any magnitude."""
  x = np.asarray(x, np.float64)
  return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def test_softplus_reference_on_hand_values():
  # Check the test's own reference at a few points: log 2, log(1 + e), log(1 + e^-1).
  np.testing.assert_allclose(ref_softplus([0.0, 1.0, -1.0, 1e4]),
                             [np.log(2.0), np.log1p(np.e), np.log1p(np.exp(-1.0)), 1e4],
                             rtol=1e-15)


def test_non_saturating_by_hand():
  # softplus(0) = log 2 for both terms.
  np.testing.assert_allclose(gan_losses.non_saturating_d_loss(jnp.zeros(4), jnp.zeros(2)),
                             2 * np.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(gan_losses.non_saturating_g_loss(jnp.zeros(3)), np.log(2.0),
                             rtol=1e-6)
  d_ref = ref_softplus(-REAL).mean() + ref_softplus(FAKE).mean()
  g_ref = ref_softplus(-FAKE).mean()
  np.testing.assert_allclose(gan_losses.non_saturating_d_loss(REAL, FAKE), d_ref, rtol=1e-6)
  np.testing.assert_allclose(gan_losses.non_saturating_g_loss(FAKE), g_ref, rtol=1e-6)
  # The BCE form -log sigmoid(real) - log(1 - sigmoid(fake)) in float64 agrees too.
  sig = lambda x: 1.0 / (1.0 + np.exp(-x))
  bce = -np.log(sig(REAL)).mean() - np.log(1.0 - sig(FAKE)).mean()
  np.testing.assert_allclose(gan_losses.non_saturating_d_loss(REAL, FAKE), bce, rtol=1e-6)


def test_hinge_by_hand():
  # relu(1 - [2, -1, .5, 0, 3]) = [0, 2, .5, 1, 0] -> 0.7; relu(1 + [-2, 1.5, 0]) = [0, 2.5, 1]
  np.testing.assert_allclose(gan_losses.hinge_d_loss(REAL, FAKE), 0.7 + 3.5 / 3, rtol=1e-6)
  np.testing.assert_allclose(gan_losses.hinge_g_loss(FAKE), -(-2.0 + 1.5 + 0.0) / 3, rtol=1e-6)


@pytest.mark.parametrize("name", ["non_saturating", "hinge"])
def test_large_logits_finite_values_and_gradients(name):
  d_fn, g_fn = gan_losses.get_gan_losses(name)
  d = d_fn(jnp.asarray(HUGE_REAL, jnp.float32), jnp.asarray(HUGE_FAKE, jnp.float32))
  g = g_fn(jnp.asarray(HUGE_FAKE, jnp.float32))
  if name == "non_saturating":
    d_ref = ref_softplus(-HUGE_REAL).mean() + ref_softplus(HUGE_FAKE).mean()
    g_ref = ref_softplus(-HUGE_FAKE).mean()
  else:
    d_ref = np.maximum(1 - HUGE_REAL, 0).mean() + np.maximum(1 + HUGE_FAKE, 0).mean()
    g_ref = -HUGE_FAKE.mean()
  np.testing.assert_allclose(d, d_ref, rtol=1e-6)
  np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-3)
  grads = jax.grad(lambda r, f: d_fn(r, f) + g_fn(f), argnums=(0, 1))(
      jnp.asarray(HUGE_REAL, jnp.float32), jnp.asarray(HUGE_FAKE, jnp.float32))
  for grad in grads:
    assert np.all(np.isfinite(grad))


def test_non_saturating_gradient_matches_sigmoid():
  # d/dx softplus(-x) = -sigmoid(-x); the mean divides by the batch size.
  grad = jax.grad(gan_losses.non_saturating_g_loss)(jnp.asarray(FAKE, jnp.float32))
  np.testing.assert_allclose(grad, -1.0 / (1.0 + np.exp(FAKE)) / FAKE.size, rtol=1e-5)


def test_bfloat16_logits_give_float32_loss():
  loss = gan_losses.non_saturating_d_loss(jnp.asarray(REAL, jnp.bfloat16),
                                          jnp.asarray(FAKE, jnp.bfloat16))
  assert loss.dtype == jnp.float32 and loss.shape == ()


def test_get_gan_losses_by_name():
  assert gan_losses.get_gan_losses("hinge") == (gan_losses.hinge_d_loss, gan_losses.hinge_g_loss)
  assert gan_losses.get_gan_losses("Non-Saturating") == (gan_losses.non_saturating_d_loss,
                                                         gan_losses.non_saturating_g_loss)
  with pytest.raises(ValueError, match=r"unknown GAN loss 'wasserstein'.*hinge"):
    gan_losses.get_gan_losses("wasserstein")
  with pytest.raises(ValueError, match="unknown GAN loss"):
    gan_losses.get_gan_losses(None)
