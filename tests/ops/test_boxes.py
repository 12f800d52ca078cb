"""Tests for jaxvision.ops.boxes against float64 NumPy references written here."""

import itertools

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.ops import boxes as box_ops


def random_boxes(rng, n, size=100.0, degenerate=0):
  xy = rng.uniform(0, size, (n, 2))
  wh = rng.uniform(0.5, size / 2, (n, 2))
  b = np.concatenate([xy, xy + wh], axis=1)
  if degenerate:
    b[:degenerate, 2:] = b[:degenerate, :2]  # zero-size boxes
  return b


def np_iou_giou(a, b):
  """Loop-based float64 IoU and GIoU."""
  iou = np.zeros((len(a), len(b)))
  giou = np.zeros((len(a), len(b)))
  for i, j in itertools.product(range(len(a)), range(len(b))):
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = a[i], b[j]
    area_a = max(ax2 - ax1, 0) * max(ay2 - ay1, 0)
    area_b = max(bx2 - bx1, 0) * max(by2 - by1, 0)
    inter = max(min(ax2, bx2) - max(ax1, bx1), 0) * max(min(ay2, by2) - max(ay1, by1), 0)
    union = area_a + area_b - inter
    iou[i, j] = inter / union if union > 0 else 0.0
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    giou[i, j] = iou[i, j] - ((hull - union) / hull if hull > 0 else 0.0)
  return iou, giou


def np_to_xyxy(b, fmt, h=None, w=None):
  if fmt == "xyxy":
    return b
  if fmt == "xywh":
    return np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], 1)
  if fmt == "cxcywh":
    return np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2,
                     b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)
  return np.stack([b[:, 1] * w, b[:, 0] * h, b[:, 3] * w, b[:, 2] * h], 1)


FORMATS = ["xyxy", "xywh", "cxcywh", "yxyx"]


@pytest.mark.parametrize("in_fmt,out_fmt", list(itertools.product(FORMATS, FORMATS)))
def test_box_convert_round_trip_and_reference(in_fmt, out_fmt):
  rng = np.random.default_rng(0)
  h, w = 80.0, 120.0
  xyxy = random_boxes(rng, 7, size=60.0)
  # Build the input in in_fmt by hand, independent of box_convert.
  x1, y1, x2, y2 = xyxy.T
  inputs = {
      "xyxy": xyxy,
      "xywh": np.stack([x1, y1, x2 - x1, y2 - y1], 1),
      "cxcywh": np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], 1),
      "yxyx": np.stack([y1 / h, x1 / w, y2 / h, x2 / w], 1),
  }
  out = box_ops.box_convert(jnp.asarray(inputs[in_fmt], jnp.float32), in_fmt, out_fmt,
                            image_size=(h, w))
  np.testing.assert_allclose(out, inputs[out_fmt], rtol=1e-5, atol=1e-4)
  back = box_ops.box_convert(out, out_fmt, in_fmt, image_size=(h, w))
  np.testing.assert_allclose(back, inputs[in_fmt], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(np_to_xyxy(np.asarray(out, np.float64), out_fmt, h, w), xyxy,
                             rtol=1e-5, atol=1e-3)


def test_box_convert_yxyx_per_image_size_batched():
  norm = jnp.array([[[0.1, 0.2, 0.5, 0.6]], [[0.0, 0.0, 1.0, 1.0]]])  # [B=2, N=1, 4]
  sizes = jnp.array([[[100.0, 200.0]], [[50.0, 40.0]]])  # [B, 1, 2] (h, w)
  out = box_ops.box_convert(norm, "yxyx", "xyxy", image_size=sizes)
  np.testing.assert_allclose(out, [[[40, 10, 120, 50]], [[0, 0, 40, 50]]], rtol=1e-6)


def test_box_convert_errors():
  b = jnp.zeros((3, 4))
  with pytest.raises(ValueError, match="expected one of 'xyxy', 'xywh', 'cxcywh', 'yxyx'"):
    box_ops.box_convert(b, "xyxy", "xxyy")
  with pytest.raises(ValueError, match="in_fmt='cxcy'"):
    box_ops.box_convert(b, "cxcy", "xyxy")
  with pytest.raises(ValueError, match="image_size"):
    box_ops.box_convert(b, "yxyx", "xyxy")
  with pytest.raises(ValueError, match="image_size"):
    box_ops.box_convert(b, "xyxy", "yxyx")
  with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
    box_ops.box_convert(jnp.zeros((3, 5)), "xyxy", "xywh")


def test_box_area():
  b = jnp.array([[0, 0, 2, 3], [1, 1, 1, 5], [5, 5, 4, 4]], jnp.float32)
  np.testing.assert_allclose(box_ops.box_area(b), [6.0, 0.0, 0.0])


def test_iou_and_giou_match_numpy_reference():
  rng = np.random.default_rng(1)
  a = random_boxes(rng, 9, degenerate=2)
  b = np.concatenate([random_boxes(rng, 6), a[:2]])  # includes identical degenerate pairs
  ref_iou, ref_giou = np_iou_giou(a, b)
  iou = box_ops.box_iou(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  giou = box_ops.generalized_box_iou(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  assert iou.shape == (9, 8) and giou.shape == (9, 8)
  assert np.isfinite(iou).all() and np.isfinite(giou).all()
  np.testing.assert_allclose(iou, ref_iou, atol=1e-6)
  np.testing.assert_allclose(giou, ref_giou, atol=1e-6)
  assert ref_iou[2:, :].max() > 0.0 and ref_giou.min() < -0.5  # the data exercise both ranges


def test_iou_batched_and_vmap():
  rng = np.random.default_rng(2)
  a = random_boxes(rng, 2 * 5).reshape(2, 5, 4)
  b = random_boxes(rng, 2 * 3).reshape(2, 3, 4)
  out = box_ops.box_iou(jnp.asarray(a), jnp.asarray(b))  # [B, N, M]
  vm = jax.jit(jax.vmap(box_ops.generalized_box_iou))(jnp.asarray(a), jnp.asarray(b))
  for i in range(2):
    ref_iou, ref_giou = np_iou_giou(a[i], b[i])
    np.testing.assert_allclose(out[i], ref_iou, atol=1e-6)
    np.testing.assert_allclose(vm[i], ref_giou, atol=1e-6)


def test_padded_masks():
  rng = np.random.default_rng(3)
  a, b = random_boxes(rng, 4), random_boxes(rng, 5)
  b[:] = a[0]  # full overlap everywhere so zeros come from the mask only
  m1 = jnp.array([True, True, False, True])
  m2 = jnp.array([True, False, True, True, False])
  iou = box_ops.box_iou(a, b, mask1=m1, mask2=m2)
  giou = box_ops.generalized_box_iou(a, b, mask2=m2)
  ref_iou, ref_giou = np_iou_giou(a, b)
  pair = np.asarray(m1)[:, None] & np.asarray(m2)[None, :]
  np.testing.assert_allclose(iou, np.where(pair, ref_iou, 0.0), atol=1e-6)
  np.testing.assert_allclose(giou, np.where(np.asarray(m2)[None], ref_giou, -1.0), atol=1e-6)
  assert float(iou[0, 0]) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="masks"):
    box_ops.box_iou(a, b, mask1=jnp.ones(3, bool))


def test_no_nan_gradients_for_degenerate_boxes():
  b = jnp.array([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
  grad = jax.jit(jax.grad(lambda x: box_ops.generalized_box_iou(x, x).sum() +
                          box_ops.box_iou(x, x).sum()))(b)
  assert np.isfinite(grad).all()


def test_clip_and_small_boxes():
  b = jnp.array([[-5.0, 3.0, 50.0, 120.0], [10.0, -1.0, 12.0, 2.0]])
  np.testing.assert_allclose(box_ops.clip_boxes(b, (100, 40)),
                             [[0, 3, 40, 100], [10, 0, 12, 2]])
  np.testing.assert_array_equal(box_ops.small_box_mask(b, 2.5), [False, True])
  np.testing.assert_array_equal(box_ops.small_box_mask(b, 2.0), [False, False])
  per_image = box_ops.clip_boxes(jnp.stack([b, b]), jnp.array([[[100, 40]], [[10, 11]]]))
  np.testing.assert_allclose(per_image[1], [[0, 3, 11, 10], [10, 0, 11, 2]])


def test_small_box_mask_marks_nan_boxes_small():
  # torchvision's remove_small_boxes keeps (w >= min_size) & (h >= min_size): NaN fails that.
  nan = np.nan
  b = jnp.array([[0, 0, 5, 5], [nan, 0, 5, 5], [0, 0, 5, nan], [nan] * 4, [0, 0, np.inf, 5],
                 [0, 0, 5, 2]], jnp.float32)
  np.testing.assert_array_equal(box_ops.small_box_mask(b, 3.0),
                                [False, True, True, True, False, True])
  np.testing.assert_array_equal(jax.jit(box_ops.small_box_mask)(b, 0.0),
                                [False, True, True, True, False, False])


coord = st.floats(-50, 150, allow_nan=False, width=32)
# Fixed shapes so the jitted function below compiles once for all examples.
boxes_a = hnp.arrays(np.float32, (5, 4), elements=coord)
boxes_b = hnp.arrays(np.float32, (3, 4), elements=coord)


@jax.jit
def _pairwise(a, b):
  return (box_ops.box_iou(a, b), box_ops.box_iou(b, a), box_ops.generalized_box_iou(a, b),
          box_ops.box_iou(a, a))


def _sorted(b):
  """Orders corners so x1 <= x2, y1 <= y2 (boxes may be degenerate)."""
  return np.concatenate([np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])], 1)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(boxes_a, boxes_b)
def test_iou_properties(a, b):
  a, b = _sorted(a), _sorted(b)
  iou, iou_t, giou, self_iou = map(np.asarray, _pairwise(a, b))
  assert np.isfinite(iou).all() and np.isfinite(giou).all()
  assert (iou >= 0).all() and (iou <= 1 + 1e-6).all()
  assert (giou >= -1 - 1e-6).all() and (giou <= 1 + 1e-6).all()
  np.testing.assert_allclose(iou, iou_t.T, atol=1e-6)
  assert (giou <= iou + 1e-6).all()
  w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
  nondegenerate = (w > 1e-2) & (h > 1e-2)
  np.testing.assert_allclose(np.diag(self_iou)[nondegenerate], 1.0, rtol=1e-5)
