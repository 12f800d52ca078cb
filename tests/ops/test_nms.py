"""NMS tests against tf.image.non_max_suppression (TF's own kernel is the reference)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from jaxvision import ops

N = 64


def clustered_boxes(seed, n=N):
  """xyxy boxes around a few centres (lots of overlap) with distinct scores."""
  rng = np.random.default_rng(seed)
  centres = rng.uniform(20, 180, (5, 2))
  c = centres[rng.integers(0, 5, n)] + rng.normal(0, 4, (n, 2))
  wh = rng.uniform(15, 35, (n, 2))
  boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(np.float32)
  scores = rng.permutation(n).astype(np.float32) / n + rng.uniform(0, 1e-3, n).astype(np.float32)
  assert len(np.unique(scores)) == n
  return boxes, scores


def tf_nms(boxes, scores, iou_threshold, max_output, score_threshold=float("-inf")):
  yxyx = boxes[:, [1, 0, 3, 2]]
  return tf.image.non_max_suppression(yxyx, scores, max_output, iou_threshold=iou_threshold,
                                      score_threshold=score_threshold).numpy()


def valid(indices, count):
  indices, count = np.asarray(indices), int(count)
  assert (indices[count:] == -1).all()
  return indices[:count]


@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("max_output", [10, N])
def test_matches_tf_over_many_seeds(iou_threshold, max_output):
  suppressed_any = False
  for seed in range(15):
    boxes, scores = clustered_boxes(seed)
    idx, count = ops.nms(boxes, scores, iou_threshold=iou_threshold, max_output=max_output)
    assert idx.shape == (max_output,) and idx.dtype == jnp.int32 and count.dtype == jnp.int32
    ref = tf_nms(boxes, scores, iou_threshold, max_output)
    np.testing.assert_array_equal(valid(idx, count), ref)
    suppressed_any |= not np.array_equal(ref, np.argsort(-scores)[:len(ref)])
  assert suppressed_any


def test_score_threshold_matches_tf():
  for seed in range(5):
    boxes, scores = clustered_boxes(100 + seed)
    thr = float(np.sort(scores)[N // 2])  # a score that exists: strict '>' matters
    idx, count = ops.nms(boxes, scores, iou_threshold=0.5, max_output=N, score_threshold=thr)
    ref = tf_nms(boxes, scores, 0.5, N, score_threshold=thr)
    np.testing.assert_array_equal(valid(idx, count), ref)
    assert (scores[ref] > thr).all()


def test_ties_lower_index_first_and_threshold_equality():
  # Boxes 0/1 and 2/3 are identical pairs; all scores equal. Box 4 has IoU exactly 0.5 with 5.
  boxes = np.array([[5, 5, 6, 6], [0, 0, 1, 1], [0, 0, 1, 1], [5, 5, 6, 6],
                    [20, 20, 22, 21], [20, 20, 21, 21]], np.float32)
  scores = np.array([0.5, 0.5, 0.5, 0.5, 0.4, 0.3], np.float32)
  idx, count = ops.nms(boxes, scores, iou_threshold=0.5, max_output=6)
  np.testing.assert_array_equal(valid(idx, count), [0, 1, 4, 5])  # IoU == 0.5 is kept
  np.testing.assert_array_equal(valid(idx, count), tf_nms(boxes, scores, 0.5, 6))
  idx, count = ops.nms(boxes, scores, iou_threshold=0.49, max_output=6)
  np.testing.assert_array_equal(valid(idx, count), [0, 1, 4])
  np.testing.assert_array_equal(valid(idx, count), tf_nms(boxes, scores, 0.49, 6))


def test_padding_valid_mask_and_edge_sizes():
  boxes, scores = clustered_boxes(7)
  mask = np.arange(N) < 40
  idx, count = ops.nms(boxes, scores, iou_threshold=0.5, max_output=N, valid_mask=mask)
  np.testing.assert_array_equal(valid(idx, count), tf_nms(boxes[:40], scores[:40], 0.5, N))
  idx, count = ops.nms(boxes[:3], scores[:3], iou_threshold=1.0, max_output=5)
  np.testing.assert_array_equal(idx, list(np.argsort(-scores[:3])) + [-1, -1])
  idx, count = ops.nms(boxes, scores, iou_threshold=0.5, max_output=0)
  assert idx.shape == (0,) and int(count) == 0
  idx, count = ops.nms(jnp.zeros((0, 4)), jnp.zeros((0,)), iou_threshold=0.5, max_output=3)
  np.testing.assert_array_equal(idx, [-1, -1, -1])
  assert int(count) == 0


def test_degenerate_boxes_do_not_suppress():
  boxes = np.array([[0, 0, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]], np.float32)
  scores = np.array([0.9, 0.8, 0.7], np.float32)
  idx, count = ops.nms(boxes, scores, iou_threshold=0.0, max_output=3)
  np.testing.assert_array_equal(valid(idx, count), [0, 1])
  np.testing.assert_array_equal(valid(idx, count), tf_nms(boxes, scores, 0.0, 3))


def test_nan_and_inf_scores_rank_lowest():
  boxes = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5], [6, 6, 7, 7]], np.float32)
  scores = np.array([np.nan, 0.5, -np.inf, -3.0], np.float32)
  idx, count = ops.nms(boxes, scores, iou_threshold=0.5, max_output=4)
  np.testing.assert_array_equal(idx, [1, 3, 0, 2])  # NaN and -inf tie as lowest: index order
  idx, count = ops.nms(boxes, scores, iou_threshold=0.5, max_output=4, score_threshold=-10.0)
  np.testing.assert_array_equal(valid(idx, count), [1, 3])


def per_class_tf(boxes, scores, classes, iou_threshold, max_output):
  keep = []
  for c in np.unique(classes):
    members = np.flatnonzero(classes == c)
    keep.extend(members[tf_nms(boxes[members], scores[members], iou_threshold, max_output)])
  keep = np.array(sorted(keep, key=lambda i: (-scores[i], i)), np.int64)
  return keep[:max_output]


@pytest.mark.parametrize("iou_threshold", [0.3, 0.6])
def test_batched_nms_matches_per_class_tf(iou_threshold):
  for seed in range(8):
    boxes, scores = clustered_boxes(200 + seed)
    classes = np.random.default_rng(seed).integers(0, 4, N).astype(np.int32)
    for max_output in (12, N):
      idx, count = ops.batched_nms(boxes, scores, classes, iou_threshold=iou_threshold,
                                   max_output=max_output)
      ref = per_class_tf(boxes, scores, classes, iou_threshold, max_output)
      np.testing.assert_array_equal(valid(idx, count), ref)
  # Class-awareness matters: identical boxes of different classes both survive.
  same = np.array([[0, 0, 4, 4]] * 2, np.float32)
  idx, count = ops.batched_nms(same, np.array([0.9, 0.8], np.float32), np.array([0, 1]),
                               iou_threshold=0.5, max_output=2)
  np.testing.assert_array_equal(idx, [0, 1])


def test_compiles_once_per_shape():
  traces = []

  def counted(boxes, scores, thr):
    traces.append(1)
    return ops.nms(boxes, scores, iou_threshold=thr, max_output=7)

  counted = jax.jit(counted)
  before = ops.nms._cache_size()
  for seed in range(4):
    boxes, scores = clustered_boxes(300 + seed, n=33)
    for thr in (0.2, 0.6):
      counted(boxes, scores, thr)
      ops.nms(boxes, scores, iou_threshold=thr, max_output=7)
  assert len(traces) == 1
  assert ops.nms._cache_size() == before + 1
  ops.nms(boxes[:20], scores[:20], iou_threshold=0.5, max_output=7)  # new shape: one more
  assert ops.nms._cache_size() == before + 2


def test_jit_vmap_over_batch():
  batch = [clustered_boxes(400 + i) for i in range(4)]
  boxes = np.stack([b for b, _ in batch])  # [B, N, 4]
  scores = np.stack([s for _, s in batch])  # [B, N]
  fn = jax.jit(jax.vmap(lambda b, s: ops.nms(b, s, iou_threshold=0.45, max_output=16)))
  idx, count = fn(boxes, scores)
  assert idx.shape == (4, 16) and count.shape == (4,)
  for i in range(4):
    np.testing.assert_array_equal(valid(idx[i], count[i]), tf_nms(boxes[i], scores[i], 0.45, 16))


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match=r"boxes must have shape \[N, 4\]"):
    ops.nms(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3)), iou_threshold=0.5, max_output=2)
  with pytest.raises(ValueError, match="scores must have shape"):
    ops.nms(jnp.zeros((3, 4)), jnp.zeros((4,)), iou_threshold=0.5, max_output=2)
  with pytest.raises(ValueError, match="classes must have shape"):
    ops.batched_nms(jnp.zeros((3, 4)), jnp.zeros((3,)), jnp.zeros((2,), jnp.int32),
                    iou_threshold=0.5, max_output=2)


# --- Against a plain greedy NMS written here (no TF): ties, zero-area boxes, three thresholds ----


def np_greedy_nms(boxes, scores, iou_threshold, max_output, classes=None):
  """Textbook greedy NMS in float64: visit by (-score, index), keep a box unless its IoU with a
  kept box (of the same class) is > iou_threshold. Zero-area boxes have IoU 0 with everything."""
  boxes = np.asarray(boxes, np.float64)
  order = sorted(range(len(boxes)), key=lambda i: (-float(scores[i]), i))
  area = lambda b: max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)  # noqa: E731
  keep = []
  for i in order:
    if len(keep) == max_output:
      break
    suppressed = False
    for j in keep:
      if classes is not None and classes[i] != classes[j]:
        continue
      a, b = boxes[i], boxes[j]
      inter = (max(min(a[2], b[2]) - max(a[0], b[0]), 0.0) *
               max(min(a[3], b[3]) - max(a[1], b[1]), 0.0))
      union = area(a) + area(b) - inter
      if union > 0 and inter / union > iou_threshold:
        suppressed = True
        break
    if not suppressed:
      keep.append(i)
  return np.array(keep, np.int64)


def tie_boxes(seed, n=48):
  """Boxes on a half-pixel grid (areas and IoUs exact in float32) with duplicated boxes,
  zero-area boxes (points and lines) and scores drawn from a few values (many ties)."""
  rng = np.random.default_rng(seed)
  xy = rng.integers(0, 40, (n, 2)) / 2.0
  wh = rng.integers(2, 30, (n, 2)) / 2.0
  boxes = np.concatenate([xy, xy + wh], 1)
  boxes[:6, 2] = boxes[:6, 0]  # zero width
  boxes[6:9, 2:] = boxes[6:9, :2]  # points
  boxes[9:15] = boxes[15:21]  # exact duplicates
  perm = rng.permutation(n)
  scores = rng.integers(0, 6, n) / 5.0
  return boxes[perm].astype(np.float32), scores[perm].astype(np.float32)


@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
def test_nms_equals_plain_greedy(iou_threshold):
  suppressed = 0
  for seed in range(12):
    boxes, scores = tie_boxes(seed)
    assert len(np.unique(scores)) < len(scores) // 4  # ties everywhere
    for max_output in (5, len(boxes)):
      idx, count = ops.nms(boxes, scores, iou_threshold=iou_threshold, max_output=max_output)
      ref = np_greedy_nms(boxes, scores, iou_threshold, max_output)
      np.testing.assert_array_equal(valid(idx, count), ref, err_msg=f"seed {seed}")
    suppressed += len(boxes) - len(ref)
    zero_area = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    assert set(np.flatnonzero(zero_area)) <= set(ref.tolist())  # never suppressed
  assert suppressed > 0


@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
def test_batched_nms_equals_plain_greedy(iou_threshold):
  for seed in range(12):
    boxes, scores = tie_boxes(50 + seed)
    classes = np.random.default_rng(seed).integers(0, 3, len(boxes)).astype(np.int32)
    for max_output in (7, len(boxes)):
      idx, count = ops.batched_nms(boxes, scores, classes, iou_threshold=iou_threshold,
                                   max_output=max_output)
      ref = np_greedy_nms(boxes, scores, iou_threshold, max_output, classes)
      np.testing.assert_array_equal(valid(idx, count), ref, err_msg=f"seed {seed}")
