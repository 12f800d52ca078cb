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


# --- Detection losses: focal and GIoU against float64 NumPy references ---------------------

import jax  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402


def _np_focal(x, t, alpha, gamma):
  x, t = x.astype(np.float64), t.astype(np.float64)
  p = 1.0 / (1.0 + np.exp(-x))
  ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
  p_t = p * t + (1 - p) * (1 - t)
  loss = ce * (1 - p_t) ** gamma
  if alpha is not None:
    loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
  return loss


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (None, 2.0), (0.5, 0.0), (0.75, 1.5)])
def test_sigmoid_focal_loss_matches_numpy(alpha, gamma):
  rng = np.random.default_rng(1)
  x = rng.uniform(-12, 12, size=(5, 7)).astype(np.float32)
  t = (rng.uniform(size=(5, 7)) < 0.3).astype(np.float32)
  t[0, :3] = [0.2, 0.7, 0.5]  # soft targets
  got = losses.sigmoid_focal_loss(jnp.asarray(x), jnp.asarray(t), alpha=alpha, gamma=gamma)
  assert got.dtype == jnp.float32 and got.shape == x.shape
  np.testing.assert_allclose(np.asarray(got), _np_focal(x, t, alpha, gamma), rtol=2e-5,
                             atol=1e-7)


@pytest.mark.skipif(not hasattr(optax, "sigmoid_focal_loss"), reason="optax without focal loss")
def test_sigmoid_focal_loss_matches_optax():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(64,)) * 6, jnp.float32)
  t = jnp.asarray(rng.uniform(size=(64,)) < 0.5, jnp.float32)
  for alpha in (0.25, None):
    np.testing.assert_allclose(
        np.asarray(losses.sigmoid_focal_loss(x, t, alpha=alpha, gamma=2.0)),
        np.asarray(optax.sigmoid_focal_loss(x, t, alpha=alpha, gamma=2.0)), rtol=1e-5, atol=1e-7)


def test_sigmoid_focal_loss_is_stable_for_large_logits():
  x = jnp.array([-1e4, -100.0, 100.0, 1e4, -1e4, 1e4], jnp.float32)
  t = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0], jnp.float32)
  f = lambda x: losses.sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0)  # noqa: E731
  got = np.asarray(f(x))
  # A confidently wrong logit x costs alpha_t * |x| (p_t ~ 0, BCE ~ |x|); right ones cost 0.
  np.testing.assert_allclose(got, [0.25 * 1e4, 25.0, 0.0, 0.0, 0.0, 0.75 * 1e4], rtol=1e-6)
  grad = np.asarray(jax.grad(lambda x: f(x).sum())(x))
  assert np.isfinite(grad).all()
  np.testing.assert_allclose(grad[:2], [-0.25, -0.25], rtol=1e-6)


def _np_giou_loss(p, g):
  p, g = p.astype(np.float64), g.astype(np.float64)
  out = np.zeros(p.shape[:-1])
  for idx in np.ndindex(*p.shape[:-1]):
    a, b = p[idx], g[idx]
    area_a = max(a[2] - a[0], 0) * max(a[3] - a[1], 0)
    area_b = max(b[2] - b[0], 0) * max(b[3] - b[1], 0)
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    inter = iw * ih
    union = area_a + area_b - inter
    iou = inter / union if union > 0 else 0.0
    cw = max(max(a[2], b[2]) - min(a[0], b[0]), 0)
    ch = max(max(a[3], b[3]) - min(a[1], b[1]), 0)
    c = cw * ch
    out[idx] = 1.0 - (iou - ((c - union) / c if c > 0 else 0.0))
  return out


def test_giou_loss_matches_numpy_including_degenerate_boxes():
  rng = np.random.default_rng(3)
  xy = rng.uniform(0, 50, size=(2, 6, 2))
  wh = rng.uniform(1, 30, size=(2, 6, 2))
  p = np.concatenate([xy, xy + wh], -1)
  xy = rng.uniform(0, 50, size=(2, 6, 2))
  wh = rng.uniform(1, 30, size=(2, 6, 2))
  g = np.concatenate([xy, xy + wh], -1)
  p[0, 0] = g[0, 0]  # identical: loss 0
  g[0, 1] = [10, 10, 10, 30]  # zero-width target
  p[0, 2] = [5, 5, 5, 5]  # a point
  p[0, 3], g[0, 3] = [7, 7, 7, 7], [7, 7, 7, 7]  # two equal points: zero enclosing area
  p[0, 4], g[0, 4] = [0, 0, 1, 1], [2, 2, 3, 3]  # disjoint: loss > 1
  p = p.astype(np.float32)
  g = g.astype(np.float32)
  got = losses.giou_loss(jnp.asarray(p), jnp.asarray(g))
  assert got.shape == (2, 6) and got.dtype == jnp.float32
  want = _np_giou_loss(p, g)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  assert abs(float(got[0, 0])) < 1e-6 and float(got[0, 4]) > 1.0
  grads = jax.grad(lambda a, b: losses.giou_loss(a, b).sum(), argnums=(0, 1))(
      jnp.asarray(p), jnp.asarray(g))
  assert all(np.isfinite(np.asarray(x)).all() for x in grads)


def test_detection_losses_reject_mismatched_shapes():
  with pytest.raises(ValueError, match="same shape"):
    losses.sigmoid_focal_loss(jnp.zeros((3, 2)), jnp.zeros((3,)))
  with pytest.raises(ValueError, match=r"\[..., 4\]"):
    losses.giou_loss(jnp.zeros((3, 4)), jnp.zeros((2, 4)))
