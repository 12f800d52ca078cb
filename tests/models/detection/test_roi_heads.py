"""Box head: RoI sampling, losses and post-processing against NumPy float64; head shapes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models.detection import roi_heads
from tests.models.detection import frcnn_reference as ref

WEIGHTS = (10.0, 10.0, 5.0, 5.0)

GT = np.array([[10, 10, 30, 26], [34, 30, 60, 62], [5, 40, 20, 60], [0, 0, 0, 0]], np.float32)
LABELS = np.array([2, 0, 1, -1], np.int32)
MASK = np.array([True, True, True, False])


def _proposals(seed, k=40):
  """Jittered copies of the gt (many foreground) plus random boxes; the last 5 padded."""
  rng = np.random.default_rng(seed)
  near = GT[rng.integers(0, 3, k // 2)] + rng.normal(size=(k // 2, 4)) * 3
  x = rng.uniform(0, 50, (k - k // 2, 2))
  wh = rng.uniform(4, 30, (k - k // 2, 2))
  boxes = np.concatenate([near, np.concatenate([x, x + wh], 1)]).astype(np.float32)
  boxes = np.clip(boxes, 0, 64)
  valid = np.ones(k, bool)
  valid[-5:] = False
  boxes[-5:] = 0
  return boxes, valid


@functools.partial(jax.jit, static_argnames=("r",))
def _sample(rng, proposals, valid, gt, labels, mask, r=16):
  return roi_heads.sample_rois(rng, proposals, valid, gt, labels, mask, batch_size_per_image=r,
                               positive_fraction=0.25)


def _reference_assignment(proposals, valid, gt, mask):
  cands = np.concatenate([proposals, gt[mask]])
  cand_valid = np.concatenate([valid, np.ones(mask.sum(), bool)])
  q = ref.iou(gt[mask], cands)  # [M_valid, K + M_valid]
  best, arg = q.max(0), q.argmax(0)
  fg = best >= 0.5
  bg = (best < 0.5) & cand_valid
  return cands, fg, bg, arg


@pytest.mark.parametrize("seed", [0, 1])
def test_sample_rois_matches_numpy_reference(seed):
  proposals, valid = _proposals(seed)
  out = _sample(jax.random.key(seed), proposals, valid, GT, LABELS, MASK)
  cands, fg, bg, arg = _reference_assignment(proposals, valid, GT, MASK)
  idx = np.asarray(out.indices)
  assert out.rois.shape == (16, 4) and out.class_targets.dtype == jnp.int32
  assert (idx >= 0).all() and len(set(idx)) == 16  # plenty of candidates: no padding
  # Candidate indices: the K proposals, then the M gt rows (the padded gt row is never drawn).
  k = len(proposals)
  assert (idx < k + 3).all()
  np.testing.assert_array_equal(np.asarray(out.rois), cands[idx])
  n_fg = min(fg.sum(), 4)
  assert fg.sum() > 4 and n_fg == int(out.num_positive) == fg[idx].sum()
  assert fg[idx[:n_fg]].all() and bg[idx[n_fg:]].all()  # foreground first, then background
  want_cls = np.where(fg[idx], LABELS[arg[idx]] + 1, 0)
  np.testing.assert_array_equal(np.asarray(out.class_targets), want_cls)
  want_box = np.zeros((16, 4))
  sel = fg[idx]
  want_box[sel] = ref.encode(GT[arg[idx][sel]], cands[idx][sel], WEIGHTS)
  np.testing.assert_allclose(np.asarray(out.box_targets), want_box, rtol=1e-4, atol=1e-4)
  assert np.asarray(out.valid).all()


def test_sample_rois_appends_gt_and_pads():
  # No valid proposals: the only candidates are the 3 gt boxes, all foreground.
  proposals = np.zeros((6, 4), np.float32)
  out = _sample(jax.random.key(0), proposals, np.zeros(6, bool), GT, LABELS, MASK)
  n = int(out.valid.sum())
  assert n == 3 == int(out.num_positive) and np.asarray(out.valid)[:3].all()
  got = sorted(np.asarray(out.indices)[:3].tolist())
  assert got == [6, 7, 8]
  np.testing.assert_array_equal(np.sort(np.asarray(out.class_targets)[:3]), [1, 2, 3])
  # A gt box as its own RoI has zero regression target.
  np.testing.assert_allclose(np.asarray(out.box_targets)[:3], 0, atol=1e-5)
  assert (np.asarray(out.class_targets)[3:] == -1).all()
  assert (np.asarray(out.indices)[3:] == -1).all() and (np.asarray(out.rois)[3:] == 0).all()


def test_sample_rois_without_ground_truth():
  proposals, valid = _proposals(3)
  out = _sample(jax.random.key(1), proposals, valid, np.zeros((4, 4), np.float32),
                np.full(4, -1, np.int32), np.zeros(4, bool))
  assert int(out.num_positive) == 0 and np.asarray(out.valid).all()
  assert (np.asarray(out.class_targets) == 0).all()
  assert (np.asarray(out.indices) < 35).all()  # valid proposals only
  assert (np.asarray(out.box_targets) == 0).all()


def test_box_losses_against_numpy():
  rng = np.random.default_rng(0)
  b, r, c = 2, 6, 3
  logits = rng.normal(size=(b, r, c + 1)).astype(np.float32) * 2
  deltas = rng.normal(size=(b, r, c, 4)).astype(np.float32)
  cls_t = np.array([[2, 0, 3, 0, 1, -1], [0, 0, 0, 0, -1, -1]], np.int32)
  box_t = rng.normal(size=(b, r, 4)).astype(np.float32) * (cls_t > 0)[..., None]
  valid = cls_t >= 0
  samples = roi_heads.RoISamples(None, jnp.asarray(cls_t), jnp.asarray(box_t),
                                 jnp.asarray(valid), None, None)
  cls_loss, box_loss = roi_heads.box_losses(jnp.asarray(logits), jnp.asarray(deltas), samples,
                                            beta=1 / 9)
  x = logits.astype(np.float64)
  logp = x - x.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  ce = [-logp[i, j, cls_t[i, j]] for i in range(b) for j in range(r) if valid[i, j]]
  np.testing.assert_allclose(float(cls_loss), np.mean(ce), rtol=1e-5)
  total = 0.0
  for i in range(b):
    for j in range(r):
      if cls_t[i, j] > 0:
        d = np.abs(deltas[i, j, cls_t[i, j] - 1].astype(np.float64) - box_t[i, j])
        total += np.where(d < 1 / 9, 4.5 * d * d, d - 0.5 / 9).sum()
  np.testing.assert_allclose(float(box_loss), total / valid.sum(), rtol=1e-5)


def _features(levels, size=64, channels=8, seed=0):
  rng = np.random.default_rng(seed)
  return {lv: jnp.asarray(rng.normal(size=(2, size >> lv, size >> lv, channels)), jnp.float32)
          for lv in levels}


@pytest.mark.parametrize("levels,num_convs", [((2, 3, 4), 0), ((4,), 1)])
def test_box_head_shapes(levels, num_convs):
  feats = _features(levels)
  rois = jnp.asarray(np.tile(GT[None, :3], (2, 2, 1)))  # [2, 6, 4]
  head = roi_heads.BoxHead(num_classes=3, fc_dim=16, num_convs=num_convs, conv_dim=8,
                           num_groups=4)
  out, variables = jax.jit(lambda: head.init_with_output(jax.random.key(0), feats, rois))()
  logits, deltas = out
  assert logits.shape == (2, 6, 4) and deltas.shape == (2, 6, 3, 4)
  assert logits.dtype == deltas.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  assert ("conv0" in variables["params"]) == (num_convs == 1)
  # The head reads only the features of the pooled RoIs: the same RoI gives the same output.
  np.testing.assert_allclose(logits[0, 0], logits[0, 3], rtol=1e-6)


def test_roi_levels():
  assert roi_heads.roi_levels([2, 3, 4, 5, 6]) == [2, 3, 4, 5]
  assert roi_heads.roi_levels([4]) == [4]
  assert roi_heads.roi_levels([6, 7]) == [6]
  with pytest.raises(ValueError, match="consecutive"):
    roi_heads.roi_levels([2, 4])


def _reference_postprocess(logits, deltas, rois, valid, size, thr, iou_thr, d, min_size):
  x = logits.astype(np.float64)
  p = np.exp(x - x.max(-1, keepdims=True))
  p = (p / p.sum(-1, keepdims=True))[:, 1:]
  dets = []
  for c in range(p.shape[1]):
    boxes = ref.clip(ref.decode(deltas[:, c], rois, WEIGHTS), size, size)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    ok = valid & (p[:, c] > thr) & (w >= min_size) & (h >= min_size)
    b, s = boxes[ok], p[ok, c]
    for i in ref.greedy_nms(b, s, iou_thr):
      dets.append((s[i], c, b[i]))
  dets.sort(key=lambda t: -t[0])
  return dets[:d]


def test_postprocess_matches_numpy_reference():
  rng = np.random.default_rng(4)
  r, c = 24, 3
  # RoIs clustered around two places so NMS has work to do; a few extend past the canvas.
  centres = np.array([[20, 20], [44, 40]])[rng.integers(0, 2, r)] + rng.normal(size=(r, 2)) * 3
  half = rng.uniform(6, 14, (r, 2))
  rois = np.concatenate([centres - half, centres + half], 1).astype(np.float32)
  rois[0] = [50, 50, 70, 70]
  logits = (rng.normal(size=(r, c + 1)) * 2).astype(np.float32)
  deltas = (rng.normal(size=(r, c, 4)) * 0.5).astype(np.float32)
  valid = np.ones(r, bool)
  valid[-3:] = False
  fn = jax.jit(lambda *a: roi_heads.postprocess(*a, (64, 64), score_threshold=0.1,
                                                nms_iou_threshold=0.5, max_detections=40,
                                                pre_nms_top_k=1000))
  out = fn(logits, deltas, rois, valid)
  want = _reference_postprocess(logits, deltas, rois, valid, 64, 0.1, 0.5, 1000, 1e-2)
  n = len(want)
  assert 0 < n < 40 and int(out.num_valid) == n
  np.testing.assert_allclose(np.asarray(out.scores[:n]), [t[0] for t in want], rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(out.classes[:n]), [t[1] for t in want])
  np.testing.assert_allclose(np.asarray(out.boxes[:n]), np.stack([t[2] for t in want]),
                             rtol=1e-4, atol=1e-3)
  assert (np.asarray(out.scores[n:]) == -1).all() and (np.asarray(out.classes[n:]) == -1).all()
  assert (np.asarray(out.boxes[n:]) == 0).all()
  assert out.boxes.dtype == jnp.float32 and out.classes.dtype == jnp.int32


def test_postprocess_truncates_to_max_detections_by_score():
  rng = np.random.default_rng(7)
  r, c = 30, 2
  x = rng.uniform(0, 56, (r, 2))
  rois = np.concatenate([x, x + 8], 1).astype(np.float32)
  logits = (rng.normal(size=(r, c + 1)) * 2).astype(np.float32)
  deltas = np.zeros((r, c, 4), np.float32)
  out = jax.jit(lambda *a: roi_heads.postprocess(*a, (64, 64), score_threshold=0.0,
                                                 max_detections=5, pre_nms_top_k=4))(
      logits, deltas, rois, np.ones(r, bool))
  # Per-class top-4 first, then NMS, then the best 5 of what is left.
  want = _reference_postprocess(logits, deltas, rois, np.ones(r, bool), 64, 0.0, 0.5, 1000,
                                1e-2)
  x = logits.astype(np.float64)
  p = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
  top4 = {(c_, round(s, 6)) for c_ in range(c) for s in np.sort(p[:, c_ + 1])[-4:]}
  want = [t for t in want if (t[1], round(t[0], 6)) in top4][:5]
  assert int(out.num_valid) == 5
  np.testing.assert_allclose(np.asarray(out.scores), [t[0] for t in want], rtol=1e-5)
