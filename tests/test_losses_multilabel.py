"""Sigmoid binary cross-entropy (multi-label) against a float64 NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import losses


def _reference(logits, targets, mask=None, eps=0.0):
  """-(t log p + (1 - t) log(1 - p)), p = 1 / (1 + exp(-x)), in float64, mean over labels."""
  x = logits.astype(np.float64)
  t = targets.astype(np.float64) * (1 - eps) + eps / 2
  p = 1.0 / (1.0 + np.exp(-x))
  per = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(1)
  if mask is None:
    return per.mean(), per
  return (per * mask).sum() / mask.sum(), per * mask


def test_matches_numpy_with_mask_and_smoothing():
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=(7, 5)) * 3).astype(np.float32)
  targets = (rng.random((7, 5)) < 0.4).astype(np.uint8)
  mask = np.array([1, 1, 0, 1, 1, 0, 1], bool)
  for eps in (0.0, 0.1):
    loss, per = losses.sigmoid_binary_cross_entropy(logits, targets, label_smoothing=eps)
    ref, ref_per = _reference(logits, targets, eps=eps)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(per), ref_per, rtol=1e-6)
    loss, per = losses.sigmoid_binary_cross_entropy(logits, targets, mask=mask,
                                                    label_smoothing=eps)
    ref, ref_per = _reference(logits, targets, mask, eps=eps)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(per), ref_per, rtol=1e-6, atol=0)
    assert float(per[2]) == 0.0 and float(per[5]) == 0.0


def test_gradient_is_sigmoid_minus_target_over_labels_and_examples():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(4, 3)).astype(np.float32)
  targets = (rng.random((4, 3)) < 0.5).astype(np.float32)
  grad = jax.grad(lambda x: losses.sigmoid_binary_cross_entropy(x, targets)[0])(logits)
  expected = (1 / (1 + np.exp(-logits.astype(np.float64))) - targets) / logits.size
  np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5, atol=1e-8)


def test_large_logits_stay_finite():
  # A confident wrong answer costs |x| (log(1 + e^-|x|) ~ e^-|x| is negligible at 80).
  logits = jnp.array([[80.0, -80.0], [80.0, -80.0]])
  targets = jnp.array([[0, 1], [1, 0]])
  loss, per = losses.sigmoid_binary_cross_entropy(logits, targets)
  np.testing.assert_allclose(np.asarray(per), [80.0, 0.0], atol=1e-5)
  grad = jax.grad(lambda x: losses.sigmoid_binary_cross_entropy(x, targets)[0])(logits)
  assert np.all(np.isfinite(np.asarray(grad))) and float(loss) == pytest.approx(40.0)


def test_all_masked_is_zero_and_bad_shapes_are_named():
  loss, _ = losses.sigmoid_binary_cross_entropy(jnp.ones((2, 3)), jnp.zeros((2, 3)),
                                                mask=jnp.array([False, False]))
  assert float(loss) == 0.0
  with pytest.raises(ValueError, match=r"\[B, K\] of one shape; found \(2, 3\) and \(2, 4\)"):
    losses.sigmoid_binary_cross_entropy(jnp.ones((2, 3)), jnp.zeros((2, 4)))
