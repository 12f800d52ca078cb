"""Matcher tests on hand-built quality matrices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import ops
from jaxvision.ops import matcher

BELOW, BETWEEN = matcher.BELOW_LOW_THRESHOLD, matcher.BETWEEN_THRESHOLDS

# [M_gt=3, N_anchors=6]; gt 2 is padding (values that would otherwise win).
QUALITY = np.array([
    [0.80, 0.45, 0.10, 0.35, 0.00, 0.20],
    [0.20, 0.50, 0.25, 0.35, 0.00, 0.00],
    [0.99, 0.99, 0.99, 0.99, 0.99, 0.99],
], np.float32)
VALID = np.array([True, True, False])


def test_thresholds_and_padding():
  out = matcher.match(QUALITY, high_threshold=0.7, low_threshold=0.3, gt_valid=VALID)
  assert out.dtype == jnp.int32 and out.shape == (6,)
  # anchor 0: 0.8 >= 0.7 -> gt 0; 1: best 0.5 (gt 1) in [0.3, 0.7); 2: 0.25 < 0.3; 3: tie 0.35 in
  # between; 4: 0 -> below; 5: 0.2 -> below.
  np.testing.assert_array_equal(out, [0, BETWEEN, BELOW, BETWEEN, BELOW, BELOW])
  # Without the mask the padded row would win everywhere.
  np.testing.assert_array_equal(
      matcher.match(QUALITY, high_threshold=0.7, low_threshold=0.3), [2] * 6)


def test_low_quality_matches():
  out = matcher.match(QUALITY, high_threshold=0.7, low_threshold=0.3,
                      allow_low_quality_matches=True, gt_valid=VALID)
  # gt 0's best is anchor 0 (already matched); gt 1's best (0.5) is anchor 1 -> matched to 1.
  np.testing.assert_array_equal(out, [0, 1, BELOW, BETWEEN, BELOW, BELOW])
  # Ties of a gt's best IoU all match; each anchor goes to its own best gt (torchvision rule).
  q = np.array([[0.4, 0.4, 0.1], [0.1, 0.6, 0.2]], np.float32)
  out = matcher.match(q, high_threshold=0.7, low_threshold=0.3, allow_low_quality_matches=True)
  np.testing.assert_array_equal(out, [0, 1, BELOW])


def test_gt_overlapping_nothing_makes_no_low_quality_matches():
  q = np.array([[0.0, 0.0, 0.0], [0.1, 0.05, 0.0]], np.float32)
  out = matcher.match(q, high_threshold=0.7, low_threshold=0.3, allow_low_quality_matches=True)
  np.testing.assert_array_equal(out, [1, BELOW, BELOW])


def test_no_valid_gt_and_boxes_jit_vmap():
  out = matcher.match(QUALITY, high_threshold=0.7, low_threshold=0.3,
                      allow_low_quality_matches=True, gt_valid=np.zeros(3, bool))
  np.testing.assert_array_equal(out, [BELOW] * 6)
  anchors = jnp.array([[0, 0, 10, 10], [0, 0, 10, 20], [50, 50, 60, 60.]])
  gt = jnp.array([[[0, 0, 10, 10], [0, 0, 0, 0]], [[50, 50, 61, 60], [0, 0, 10, 21]]])
  valid = jnp.array([[True, False], [True, True]])
  fn = jax.jit(jax.vmap(lambda g, v: ops.match_boxes(
      anchors, g, high_threshold=0.7, low_threshold=0.4, gt_valid=v)))
  # IoUs: image 0: gt0 vs anchors = [1, 0.5, 0]; image 1: gt0 = [0, 0, 100/110],
  # gt1 = [100/210, 200/210, 0].
  np.testing.assert_array_equal(fn(gt, valid), [[0, BETWEEN, BELOW], [BETWEEN, 1, 0]])


def test_bad_thresholds():
  with pytest.raises(ValueError, match="low_threshold must be <= high_threshold"):
    matcher.match(QUALITY, high_threshold=0.3, low_threshold=0.7)
  with pytest.raises(ValueError, match="gt_valid"):
    matcher.match(QUALITY, high_threshold=0.7, low_threshold=0.3, gt_valid=np.ones(2, bool))
