"""Box coder tests against a float64 NumPy reference."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import ops
from jaxvision.ops import box_coder

WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def np_encode(gt, anchors, weights):
  wx, wy, ww, wh = weights
  aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
  ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
  gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
  gx, gy = gt[:, 0] + gw / 2, gt[:, 1] + gh / 2
  return np.stack([wx * (gx - ax) / aw, wy * (gy - ay) / ah,
                   ww * np.log(gw / aw), wh * np.log(gh / ah)], 1)


def random_boxes(rng, n):
  xy = rng.uniform(0, 300, (n, 2))
  return np.concatenate([xy, xy + rng.uniform(4, 150, (n, 2))], 1)


def test_encode_matches_reference_and_round_trips():
  rng = np.random.default_rng(0)
  gt, anchors = random_boxes(rng, 50), random_boxes(rng, 50)
  for weights in (WEIGHTS, (1.0, 1.0, 1.0, 1.0)):
    deltas = box_coder.encode(jnp.asarray(gt, jnp.float32), jnp.asarray(anchors, jnp.float32),
                              weights)
    np.testing.assert_allclose(deltas, np_encode(gt, anchors, weights), rtol=1e-4, atol=1e-4)
    back = box_coder.decode(deltas, jnp.asarray(anchors, jnp.float32), weights)
    np.testing.assert_allclose(back, gt, rtol=1e-4, atol=1e-3)


def test_decode_matches_reference_with_batch_dims():
  rng = np.random.default_rng(1)
  anchors = random_boxes(rng, 12).reshape(3, 4, 4)
  deltas = rng.normal(0, 1, (3, 4, 4))
  out = ops.decode_boxes(jnp.asarray(deltas, jnp.float32), jnp.asarray(anchors, jnp.float32),
                         WEIGHTS)
  a = anchors.reshape(-1, 4)
  d = deltas.reshape(-1, 4) / np.array(WEIGHTS)
  w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
  cx, cy = a[:, 0] + w / 2 + d[:, 0] * w, a[:, 1] + h / 2 + d[:, 1] * h
  pw, ph = np.exp(d[:, 2]) * w, np.exp(d[:, 3]) * h
  ref = np.stack([cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2], 1).reshape(3, 4, 4)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3)


def test_clip_keeps_huge_deltas_finite():
  assert box_coder.BBOX_XFORM_CLIP == pytest.approx(math.log(1000.0 / 16))
  anchors = jnp.array([[0.0, 0.0, 16.0, 16.0]] * 3)
  deltas = jnp.array([[0.0, 0.0, 1e4, 1e4], [0.0, 0.0, jnp.inf, 50.0], [3.0, -2.0, 1e30, -3.0]])
  out = np.asarray(box_coder.decode(deltas, anchors))
  assert np.isfinite(out).all()
  # Width capped at 16 * 1000 / 16 = 1000 pixels around the anchor centre.
  np.testing.assert_allclose(out[0], [8 - 500, 8 - 500, 8 + 500, 8 + 500], rtol=1e-5)
  np.testing.assert_allclose(out[1, 2] - out[1, 0], 1000.0, rtol=1e-5)


def test_degenerate_boxes_encode_finite():
  gt = jnp.array([[0.0, 0.0, 0.0, 0.0], [5.0, 5.0, 9.0, 9.0]])
  anchors = jnp.array([[1.0, 1.0, 1.0, 1.0], [4.0, 4.0, 8.0, 8.0]])
  deltas = np.asarray(box_coder.encode(gt, anchors, WEIGHTS))
  assert np.isfinite(deltas).all()
  np.testing.assert_allclose(deltas[1], [2.5, 2.5, 0.0, 0.0], atol=1e-6)
  with pytest.raises(ValueError, match="weights"):
    box_coder.encode(gt, anchors, (1.0, 1.0))
