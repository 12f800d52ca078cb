"""Classification loss against a float64 NumPy reference."""

import numpy as np
import jax.numpy as jnp

from jaxvision import losses


def _reference(logits, labels, eps, mask=None):
  logits = logits.astype(np.float64)
  k = logits.shape[1]
  logp = logits - logits.max(1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
  targets = np.full(logits.shape, eps / k)
  targets[np.arange(len(labels)), labels] += 1 - eps
  per = -(targets * logp).sum(1)
  if mask is None:
    return per.mean()
  return (per * mask).sum() / mask.sum()


def test_softmax_cross_entropy_with_smoothing_and_mask():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 5)).astype(np.float32) * 4
  labels = rng.integers(0, 5, size=6)
  mask = np.array([1, 1, 0, 1, 0, 1], bool)
  for eps in (0.0, 0.1):
    loss, _ = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                           label_smoothing=eps)
    np.testing.assert_allclose(float(loss), _reference(logits, labels, eps), rtol=1e-6)
    loss, per = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                             label_smoothing=eps, mask=jnp.asarray(mask))
    np.testing.assert_allclose(float(loss), _reference(logits, labels, eps, mask), rtol=1e-6)
    assert float(per[2]) == 0.0 and float(per[4]) == 0.0


def test_all_masked_gives_zero_not_nan():
  loss, _ = losses.softmax_cross_entropy(jnp.ones((2, 3)), jnp.array([0, 1]),
                                         mask=jnp.array([False, False]))
  assert float(loss) == 0.0
