"""RPN: head layout, anchors, targets and losses against NumPy float64, proposals."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import ops
from jaxvision.models.detection import rpn
from tests.models.detection import frcnn_reference as ref

# Two levels of a 64x64 canvas: stride 4 (16x16) and stride 8 (8x8), 3 anchors per location.
SHAPES = [(16, 16), (8, 8)]
LEVELS = [2, 3]
SIZES = ((16.0,), (32.0,))
RATIOS = (0.5, 1.0, 2.0)


def _anchors():
  return rpn.level_anchors(SHAPES, LEVELS, SIZES, RATIOS)


def test_level_anchors_split_generate_anchors_by_level():
  levels = _anchors()
  assert [a.shape for a in levels] == [(16 * 16 * 3, 4), (8 * 8 * 3, 4)]
  whole = ops.generate_anchors(SHAPES, [4, 8], SIZES, RATIOS)
  np.testing.assert_array_equal(np.concatenate([np.asarray(a) for a in levels]), whole)
  # Level 3, cell (y=1, x=2), anchor ratio 1 (index 1): 32x32 centred on (16, 8).
  np.testing.assert_array_equal(np.asarray(levels[1][(1 * 8 + 2) * 3 + 1]), [0, -8, 32, 24])


def test_default_anchor_sizes():
  assert rpn.default_anchor_sizes([2, 3, 4, 5, 6]) == ((32.,), (64.,), (128.,), (256.,), (512.,))
  assert rpn.default_anchor_sizes([3, 4, 5]) == ((64.,), (128.,), (256.,))
  assert rpn.default_anchor_sizes([4]) == ((32., 64., 128., 256., 512.),)


def test_head_shares_weights_and_lays_out_like_the_anchors():
  head = rpn.RPNHead(num_anchors=3, conv_dim=8)
  rng = np.random.default_rng(0)
  x2 = jnp.asarray(rng.normal(size=(2, 16, 16, 4)), jnp.float32)
  x3 = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
  variables = jax.jit(head.init)(jax.random.key(0), [x2, x3])
  assert set(variables["params"]) == {"conv", "cls_logits", "bbox_pred"}
  apply = jax.jit(head.apply)
  (o2, o3), (d2, d3) = apply(variables, [x2, x3])
  assert o2.shape == (2, 768) and o3.shape == (2, 192)
  assert d2.shape == (2, 768, 4) and d3.shape == (2, 192, 4)
  # Same weights on every level: level 3's output equals the head applied to it alone.
  (o3_alone,), _ = apply(variables, [x3])
  np.testing.assert_allclose(o3, o3_alone, rtol=1e-6, atol=1e-7)
  # Row (y * W + x) * A + a is the 1x1 conv output at (y, x), channel a (NumPy reference).
  p = variables["params"]
  y, x = 5, 2
  patch = np.pad(np.asarray(x3[1], np.float64), ((1, 1), (1, 1), (0, 0)))[y:y + 3, x:x + 3]
  t = np.maximum(np.einsum("hwc,hwcd->d", patch, np.asarray(p["conv"]["kernel"], np.float64))
                 + p["conv"]["bias"], 0.0)
  want_obj = t @ np.asarray(p["cls_logits"]["kernel"][0, 0]) + p["cls_logits"]["bias"]
  want_box = t @ np.asarray(p["bbox_pred"]["kernel"][0, 0]) + p["bbox_pred"]["bias"]
  np.testing.assert_allclose(o3[1, (y * 8 + x) * 3:(y * 8 + x + 1) * 3], want_obj, rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(d3[1, (y * 8 + x) * 3 + 2], want_box.reshape(3, 4)[2], rtol=1e-4,
                             atol=1e-6)


GT = np.array([
    [4, 6, 22, 20],  # fits 16-px anchors well
    [30, 28, 62, 60],  # 32x32: an exact P3 anchor
    [40, 2, 47, 9],  # 7x7: no anchor reaches 0.7, only low-quality matches
    [0, 0, 0, 0],  # padding
], np.float32)
GT_MASK = np.array([True, True, True, False])


@functools.partial(jax.jit, static_argnames=("batch_size",))
def _targets(rng, anchors, gt, mask, batch_size=64):
  return rpn.rpn_targets(rng, anchors, gt, mask, batch_size_per_image=batch_size,
                         positive_fraction=0.5)


def test_rpn_targets_match_numpy_reference():
  anchors = np.concatenate([np.asarray(a) for a in _anchors()])
  out = _targets(jax.random.key(3), anchors, GT, GT_MASK)
  quality = ref.iou(GT[GT_MASK], anchors)  # [3, N]
  want = ref.match(quality, 0.7, 0.3, allow_low_quality=True)
  np.testing.assert_array_equal(np.asarray(out.matches), want)
  # The small box is matched only through its best anchors, with IoU below 0.7.
  small = want == 2
  assert small.any() and (quality[2, small] < 0.7).all()
  pos, neg = want >= 0, want == -1
  got_pos, got_neg = np.asarray(out.positive), np.asarray(out.negative)
  assert not (got_pos & ~pos).any() and not (got_neg & ~neg).any()
  n_pos = min(pos.sum(), 32)
  assert got_pos.sum() == n_pos == int(out.num_positive)
  assert got_neg.sum() == 64 - n_pos == int(out.num_sampled) - n_pos
  want_deltas = ref.encode(GT[want[pos]], anchors[pos], (1, 1, 1, 1))
  np.testing.assert_allclose(np.asarray(out.box_targets)[pos], want_deltas, rtol=1e-4,
                             atol=1e-5)
  assert (np.asarray(out.box_targets)[~pos] == 0).all()


def test_rpn_targets_without_ground_truth_are_all_negative():
  anchors = jnp.concatenate(_anchors())
  out = _targets(jax.random.key(0), anchors, np.zeros((4, 4), np.float32), np.zeros(4, bool))
  assert (np.asarray(out.matches) == -1).all()
  assert int(out.num_positive) == 0 and int(out.negative.sum()) == 64
  assert np.isfinite(np.asarray(out.box_targets)).all()


def test_rpn_losses_against_numpy():
  rng = np.random.default_rng(1)
  b, n = 2, 30
  logits = rng.normal(size=(b, n)).astype(np.float32) * 3
  deltas = rng.normal(size=(b, n, 4)).astype(np.float32)
  box_targets = rng.normal(size=(b, n, 4)).astype(np.float32) * 0.2
  positive = rng.random((b, n)) < 0.2
  negative = ~positive & (rng.random((b, n)) < 0.5)
  t = rpn.RPNTargets(None, jnp.asarray(positive), jnp.asarray(negative),
                     jnp.asarray(box_targets), None, None)
  cls_loss, box_loss = rpn.rpn_losses(jnp.asarray(logits), jnp.asarray(deltas), t, beta=1 / 9)
  x = logits.astype(np.float64)
  bce = np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0) - x * positive
  sampled = positive | negative
  want_cls = bce[sampled].sum() / sampled.sum()
  d = np.abs(deltas.astype(np.float64) - box_targets)
  l1 = np.where(d < 1 / 9, 0.5 * d * d * 9, d - 0.5 / 9).sum(-1)
  want_box = l1[positive].sum() / sampled.sum()
  np.testing.assert_allclose(float(cls_loss), want_cls, rtol=1e-5)
  np.testing.assert_allclose(float(box_loss), want_box, rtol=1e-5)


def _reference_proposals(logits, deltas, anchors, size, pre, post, thr, min_size):
  """tensorflow/tpu's multilevel_propose_rois in NumPy for one image."""
  kept_boxes, kept_scores = [], []
  for lg, d, a in zip(logits, deltas, anchors):
    top = np.argsort(-lg, kind="stable")[:pre]
    boxes = ref.clip(ref.decode(d[top], a[top], (1, 1, 1, 1)), size, size)
    scores = lg[top]
    ok = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    boxes, scores = boxes[ok], scores[ok]
    keep = ref.greedy_nms(boxes, scores, thr)[:post]
    kept_boxes.append(boxes[keep])
    kept_scores.append(scores[keep])
  boxes, scores = np.concatenate(kept_boxes), np.concatenate(kept_scores)
  order = np.argsort(-scores, kind="stable")[:post]
  return boxes[order], 1 / (1 + np.exp(-scores[order]))


def _random_outputs(seed, b=2):
  rng = np.random.default_rng(seed)
  anchors = [np.asarray(a) for a in _anchors()]
  logits = [rng.normal(size=(b, len(a))).astype(np.float32) for a in anchors]
  # Some large deltas so boxes leave the canvas and get clipped, some tiny boxes.
  deltas = [(rng.normal(size=(b, len(a), 4)) * [0.5, 0.5, 1.0, 1.0]).astype(np.float32)
            for a in anchors]
  deltas[0][0, :5, 2:] = -8.0
  return logits, deltas, anchors


@pytest.mark.parametrize("pre,post", [(40, 30), (5, 16)])
def test_propose_matches_reference_and_is_padded(pre, post):
  logits, deltas, anchors = _random_outputs(0)
  fn = jax.jit(lambda lg, d: rpn.propose(lg, d, anchors, (64, 64), pre_nms_top_k=pre,
                                         post_nms_top_k=post, nms_iou_threshold=0.7,
                                         min_size=1.0))
  out = fn(logits, deltas)
  assert out.boxes.shape == (2, post, 4) and out.scores.shape == (2, post)
  assert out.valid.shape == (2, post) and out.boxes.dtype == jnp.float32
  for i in range(2):
    want_boxes, want_scores = _reference_proposals(
        [lg[i] for lg in logits], [d[i] for d in deltas], anchors, 64, pre, post, 0.7, 1.0)
    n = len(want_boxes)
    valid = np.asarray(out.valid[i])
    assert valid.sum() == n and valid[:n].all()  # a prefix
    np.testing.assert_allclose(np.asarray(out.boxes[i, :n]), want_boxes, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.asarray(out.scores[i, :n]), want_scores, rtol=1e-5)
    assert (np.asarray(out.scores[i, n:]) == -1).all()
    assert (np.asarray(out.boxes[i, n:]) == 0).all()
  if pre * 2 < post:
    assert not np.asarray(out.valid).all()  # fewer candidates than slots: padding


def test_single_level_proposals_inside_canvas_and_nms_property():
  rng = np.random.default_rng(5)
  anchors = _anchors()[:1]
  logits = [jnp.asarray(rng.normal(size=(2, 768)), jnp.float32)]
  deltas = [jnp.asarray(rng.normal(size=(2, 768, 4)) * 0.7, jnp.float32)]
  for thr in (0.3, 0.7):
    out = jax.jit(lambda lg, d: rpn.propose(lg, d, anchors, (64, 64), pre_nms_top_k=300,
                                            post_nms_top_k=100, nms_iou_threshold=thr))(
                                                logits, deltas)
    boxes = np.asarray(out.boxes)
    assert (boxes >= 0).all() and (boxes <= 64).all()
    for i in range(2):
      kept = boxes[i][np.asarray(out.valid[i])]
      assert len(kept) > 10
      overlap = ref.iou(kept, kept) - np.eye(len(kept))
      assert overlap.max() <= thr + 1e-6
      s = np.asarray(out.scores[i])[np.asarray(out.valid[i])]
      assert (np.diff(s) <= 0).all()


def test_no_gradient_flows_through_proposals():
  logits, deltas, anchors = _random_outputs(2)

  def f(lg, d):
    out = rpn.propose(lg, d, anchors, (64, 64), pre_nms_top_k=20, post_nms_top_k=10)
    return out.boxes.sum() + out.scores.sum()

  g_logits, g_deltas = jax.jit(jax.grad(f, argnums=(0, 1)))(logits, deltas)
  assert all(not np.asarray(g).any() for g in g_logits + g_deltas)


def test_propose_rejects_mismatched_levels():
  logits, deltas, anchors = _random_outputs(0)
  with pytest.raises(ValueError, match="same levels"):
    rpn.propose(logits, deltas[:1], anchors, (64, 64), pre_nms_top_k=5, post_nms_top_k=5)
