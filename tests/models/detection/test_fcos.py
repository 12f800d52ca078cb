"""FCOS: target assignment, losses and decoding against NumPy float64 references; the detector
contract under jit; a tiny overfit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxvision.models.detection import backbones, fcos, fpn

# ------------------------------------------------------------------ NumPy float64 references


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_targets(points, strides, ranges, boxes, labels, mask, radius):
  """Loops over locations and boxes (FCOS's rules, written independently)."""
  n = len(points)
  out = {"labels": -np.ones(n, np.int64), "matched": -np.ones(n, np.int64),
         "ltrb": np.zeros((n, 4)), "centerness": np.zeros(n)}
  for i in range(n):
    x, y = points[i].astype(np.float64)
    s, (lo, hi) = float(strides[i]), ranges[i].astype(np.float64)
    best, best_area = -1, math.inf
    for j in range(len(boxes)):
      if not mask[j]:
        continue
      x1, y1, x2, y2 = boxes[j].astype(np.float64)
      l, t, r, b = x - x1, y - y1, x2 - x, y2 - y
      if radius > 0:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        inside = (max(cx - radius * s, x1) < x < min(cx + radius * s, x2)
                  and max(cy - radius * s, y1) < y < min(cy + radius * s, y2))
      else:
        inside = min(l, t, r, b) > 0
      if not inside or not lo <= max(l, t, r, b) <= hi:
        continue
      area = (x2 - x1) * (y2 - y1)
      if area < best_area:  # strict: the lower index wins ties
        best, best_area = j, area
    if best >= 0:
      x1, y1, x2, y2 = boxes[best].astype(np.float64)
      l, t, r, b = x - x1, y - y1, x2 - x, y2 - y
      out["labels"][i], out["matched"][i] = labels[best], best
      out["ltrb"][i] = [l, t, r, b]
      out["centerness"][i] = math.sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))
  return out


def np_focal(x, t, alpha=0.25, gamma=2.0):
  p = _sigmoid(x)
  ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
  p_t = p * t + (1 - p) * (1 - t)
  return (alpha * t + (1 - alpha) * (1 - t)) * ce * (1 - p_t) ** gamma


def np_iou(a, b):
  iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
  ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
  inter = iw * ih
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def np_giou_loss(a, b):
  iou = np_iou(a, b)
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
  union -= max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)
  c = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
  return 1 - (iou - (c - union) / c)


# ------------------------------------------------------------------ locations, ranges, targets


def test_points_and_default_ranges():
  points, strides = fcos.fcos_points([(2, 3), (1, 2)], [8, 16])
  np.testing.assert_array_equal(points, [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12],
                                         [8, 8], [24, 8]])
  np.testing.assert_array_equal(strides, [8] * 6 + [16] * 2)
  inf = math.inf
  assert fcos.default_size_ranges(3, 7) == ((-1, 64), (64, 128), (128, 256), (256, 512),
                                            (512, inf))
  assert fcos.default_size_ranges(3, 5) == ((-1, 64), (64, 128), (128, inf))


def _target_case():
  """Two images on a 128 canvas, levels 3..5 with narrow ranges so every level is used."""
  shapes, level_strides = [(16, 16), (8, 8), (4, 4)], [8, 16, 32]
  points, strides = fcos.fcos_points(shapes, level_strides)
  level_ranges = [(-1, 24), (24, 48), (48, math.inf)]
  ranges = np.concatenate([np.tile(r, (h * w, 1)) for r, (h, w) in zip(level_ranges, shapes)])
  ranges = ranges.astype(np.float32)
  rng = np.random.default_rng(0)
  m = 10
  boxes = np.zeros((2, m, 4), np.float32)
  labels = -np.ones((2, m), np.int32)
  mask = np.zeros((2, m), bool)
  for j in range(7):  # random boxes on a 0.5 grid (exact in float32)
    xy = rng.integers(0, 200, size=2) / 2
    wh = rng.integers(8, 180, size=2) / 2
    boxes[0, j] = [xy[0], xy[1], min(xy[0] + wh[0], 128), min(xy[1] + wh[1], 128)]
  # Equal areas overlapping (index 7 < 8 wins ties) and a box nested in box 7 (smaller wins).
  boxes[0, 7] = [30, 30, 70, 70]
  boxes[0, 8] = [40, 40, 80, 80]
  boxes[0, 9] = [45, 45, 60, 62]
  labels[0] = rng.integers(0, 3, size=m)
  mask[0] = True
  mask[0, 3] = False  # padding inside the prefix region must never be assigned
  labels[0, 3] = -1
  return points, strides, ranges, boxes, labels, mask  # image 1 has no boxes


@pytest.mark.parametrize("radius", [1.5, 0.0])
def test_targets_match_numpy_reference(radius):
  points, strides, ranges, boxes, labels, mask = _target_case()
  fn = jax.jit(jax.vmap(lambda b, l, m: fcos.fcos_targets(points, strides, ranges, b, l, m,
                                                          radius=radius)))
  got = jax.tree.map(np.asarray, fn(boxes, labels, mask))
  assert got["labels"].dtype == np.int32 and got["ltrb"].dtype == np.float32
  for i in range(2):
    want = np_targets(points, strides, ranges, boxes[i], labels[i], mask[i], radius)
    np.testing.assert_array_equal(got["labels"][i], want["labels"])
    np.testing.assert_array_equal(got["matched"][i], want["matched"])
    np.testing.assert_allclose(got["ltrb"][i], want["ltrb"], atol=1e-5)
    np.testing.assert_allclose(got["centerness"][i], want["centerness"], rtol=1e-5, atol=1e-7)
  matched = got["matched"][0]
  assert (got["labels"][1] == -1).all() and (got["centerness"][1] == 0).all()
  assert not (matched == 3).any()  # padded
  assert (matched >= 0).sum() > 10 and len(set(matched[matched >= 0])) >= 5
  assert (matched == 7).any() and (matched == 9).any()  # ties and nesting were exercised
  levels = np.repeat([3, 4, 5], [256, 64, 16])
  assert len(set(levels[matched >= 0])) == 3  # every level has positives


def test_zero_area_boxes_are_never_assigned():
  points, strides = fcos.fcos_points([(4, 4)], [8])
  ranges = np.tile([-1, np.inf], (16, 1)).astype(np.float32)
  boxes = np.array([[12, 0, 12, 32], [0, 12, 32, 12], [12, 12, 12, 12]], np.float32)
  t = fcos.fcos_targets(points, strides, ranges, boxes, np.zeros(3, np.int32),
                        np.ones(3, bool), radius=0.0)
  assert (np.asarray(t["labels"]) == -1).all()


# ------------------------------------------------------------------ losses and decoding


def test_losses_match_numpy_reference():
  points, strides, ranges, boxes, labels, mask = _target_case()
  n, k = len(points), 3
  rng = np.random.default_rng(1)
  cls_logits = rng.normal(size=(2, n, k)).astype(np.float32) * 2
  dist = rng.uniform(0.1, 4, size=(2, n, 4)).astype(np.float32)
  ctr_logits = rng.normal(size=(2, n)).astype(np.float32)
  got = jax.jit(lambda *a: fcos.fcos_losses(*a, points, strides, ranges, boxes, labels, mask,
                                            radius=1.5))(cls_logits, dist, ctr_logits)
  cls = box = box_w = ctr = 0.0
  num_pos = 0
  for i in range(2):
    t = np_targets(points, strides, ranges, boxes[i], labels[i], mask[i], 1.5)
    onehot = np.zeros((n, k))
    pos = t["labels"] >= 0
    onehot[pos, t["labels"][pos]] = 1
    cls += np_focal(cls_logits[i].astype(np.float64), onehot).sum()
    num_pos += pos.sum()
    for j in np.flatnonzero(pos):
      s = strides[j]
      l, tt, r, b = dist[i, j].astype(np.float64)
      tl, tt_, tr, tb = t["ltrb"][j] / s
      w = t["centerness"][j]
      box += w * np_giou_loss([-l, -tt, r, b], [-tl, -tt_, tr, tb])
      box_w += w
      p = _sigmoid(float(ctr_logits[i, j]))
      ctr += -(w * np.log(p) + (1 - w) * np.log(1 - p))
  assert num_pos > 10
  np.testing.assert_allclose(float(got["cls"]), cls / num_pos, rtol=1e-5)
  np.testing.assert_allclose(float(got["box"]), box / box_w, rtol=1e-5)
  np.testing.assert_allclose(float(got["centerness"]), ctr / num_pos, rtol=1e-5)
  # No boxes at all: cls over negatives / 1, box and centerness exactly 0, all finite.
  empty = fcos.fcos_losses(cls_logits, dist, ctr_logits, points, strides, ranges,
                           np.zeros_like(boxes), -np.ones_like(labels), np.zeros_like(mask))
  np.testing.assert_allclose(float(empty["cls"]),
                             np_focal(cls_logits.astype(np.float64), 0.0).sum(), rtol=1e-5)
  assert float(empty["box"]) == 0.0 and float(empty["centerness"]) == 0.0


def np_decode(cls_logits, dist, ctr_logits, points, strides, canvas, top_k, score_thr, iou_thr,
              d):
  """Per image: scores, top-k, boxes, clip, greedy class-aware NMS, first d."""
  h, w = canvas
  n, k = cls_logits.shape
  scores = np.sqrt(_sigmoid(cls_logits) * _sigmoid(ctr_logits)[:, None]).reshape(-1)
  order = np.argsort(-scores, kind="stable")[:top_k]
  cands = []
  for idx in order:
    loc, c = divmod(int(idx), k)
    (x, y), s = points[loc], strides[loc]
    l, t, r, b = dist[loc] * s
    box = [np.clip(x - l, 0, w), np.clip(y - t, 0, h), np.clip(x + r, 0, w), np.clip(y + b, 0, h)]
    cands.append((scores[idx], c, box))
  kept = []
  for score, c, box in cands:  # already by decreasing score
    if score <= score_thr or len(kept) == d:
      continue
    if all(kc != c or np_iou(kb, box) <= iou_thr for _, kc, kb in kept):
      kept.append((score, c, box))
  return kept


def test_decode_matches_numpy_reference():
  shapes, level_strides = [(4, 4), (2, 2)], [8, 16]
  points, strides = fcos.fcos_points(shapes, level_strides)
  n, k, d = len(points), 3, 10
  rng = np.random.default_rng(2)
  cls_logits = rng.normal(size=(2, n, k)).astype(np.float64)
  cls_logits[1] -= 2.5  # few scores above the threshold: padding
  dist = rng.uniform(0.3, 3, size=(2, n, 4))
  ctr_logits = rng.normal(size=(2, n))
  f32 = lambda a: a.astype(np.float32)  # noqa: E731
  cls_logits, dist, ctr_logits = f32(cls_logits), f32(dist), f32(ctr_logits)
  got = jax.jit(lambda *a: fcos.fcos_decode(*a, points, strides, (32, 32), pre_nms_top_k=40,
                                            score_threshold=0.3, iou_threshold=0.5,
                                            max_detections=d))(cls_logits, dist, ctr_logits)
  got = jax.tree.map(np.asarray, got)
  assert got["boxes"].shape == (2, d, 4) and got["scores"].shape == (2, d)
  assert got["classes"].dtype == np.int32 and got["num_valid"].dtype == np.int32
  for i in range(2):
    want = np_decode(cls_logits[i].astype(np.float64), dist[i].astype(np.float64),
                     ctr_logits[i].astype(np.float64), points, strides, (32, 32), 40, 0.3, 0.5, d)
    nv = len(want)
    assert int(got["num_valid"][i]) == nv and 0 < nv
    np.testing.assert_allclose(got["scores"][i, :nv], [s for s, _, _ in want], rtol=1e-5)
    np.testing.assert_array_equal(got["classes"][i, :nv], [c for _, c, _ in want])
    np.testing.assert_allclose(got["boxes"][i, :nv], [b for _, _, b in want], atol=1e-4)
    assert (got["scores"][i, nv:] == -1).all() and (got["classes"][i, nv:] == -1).all()
  assert int(got["num_valid"].min()) < d  # padding was exercised


# ------------------------------------------------------------------ the detector

MODEL = fcos.FCOS(num_classes=2, backbone=backbones.ResNetGNTiny(),
                  fpn=fpn.FPN(32, norm="group", groups=8), head_channels=32, num_convs=1,
                  head_groups=8, max_detections=200)  # D > 8*8+4*4+2*2 locations x 2 classes
TX = optax.adam(3e-3)


def _synthetic():
  """Two 64x64 images with bright rectangles: class 0 red, class 1 green."""
  spec = [[(6, 6, 26, 22, 0), (34, 30, 58, 58, 1), (8, 40, 24, 60, 1)],
          [(36, 4, 60, 24, 0), (10, 28, 30, 56, 0), (40, 36, 56, 52, 1)]]
  images = np.full((2, 64, 64, 3), 0.1, np.float32)
  boxes = np.zeros((2, 4, 4), np.float32)
  labels = -np.ones((2, 4), np.int32)
  for i, objects in enumerate(spec):
    for j, (x1, y1, x2, y2, c) in enumerate(objects):
      images[i, y1:y2, x1:x2, c] = 1.0
      boxes[i, j], labels[i, j] = (x1, y1, x2, y2), c
  return images, {"boxes": boxes, "labels": labels, "mask": labels >= 0}


@jax.jit
def _init(images):
  params = MODEL.init(jax.random.key(0, impl="rbg"), images, train=False)["params"]
  return params, TX.init(params)


@jax.jit
def _train_step(params, opt_state, images, targets):
  def loss_fn(p):
    terms = MODEL.apply({"params": p}, images, targets, train=True)
    return sum(terms.values()), terms
  (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = TX.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, terms, grads


@jax.jit
def _detect(params, images):
  return MODEL.apply({"params": params}, images, train=False)


def _check_detections(det, batch, d, canvas):
  det = jax.tree.map(np.asarray, det)
  assert det["boxes"].shape == (batch, d, 4) and det["boxes"].dtype == np.float32
  assert det["scores"].shape == (batch, d) and det["scores"].dtype == np.float32
  assert det["classes"].shape == (batch, d) and det["classes"].dtype == np.int32
  assert det["num_valid"].shape == (batch,) and det["num_valid"].dtype == np.int32
  for i in range(batch):
    nv = int(det["num_valid"][i])
    s = det["scores"][i]
    assert (s[:nv] > 0.05).all() and (np.diff(s[:nv]) <= 0).all()
    assert (s[nv:] == -1).all() and (det["classes"][i, nv:] == -1).all()
    assert ((det["classes"][i, :nv] >= 0) & (det["classes"][i, :nv] < 2)).all()
    assert (det["boxes"][i] >= 0).all() and (det["boxes"][i] <= canvas).all()
  return det


def test_forward_both_ways_under_jit_with_an_empty_image():
  images, targets = _synthetic()
  params, opt_state = _init(images)
  det = _check_detections(_detect(params, images), 2, 200, 64)
  assert (det["num_valid"] < 200).all()  # padding is present
  # Image 1 without boxes: every loss term and gradient finite.
  targets["mask"][1] = False
  targets["labels"][1] = -1
  targets["boxes"][1] = 0
  new_params, _, terms, grads = _train_step(params, opt_state, images, targets)
  assert set(terms) == {"cls", "box", "centerness"}
  for v in terms.values():
    assert v.shape == () and v.dtype == jnp.float32 and np.isfinite(float(v))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(new_params))
  # No boxes anywhere: still finite, box and centerness terms 0.
  empty = {"boxes": np.zeros_like(targets["boxes"]), "labels": -np.ones_like(targets["labels"]),
           "mask": np.zeros_like(targets["mask"])}
  _, _, terms, grads = _train_step(params, opt_state, images, empty)
  assert float(terms["box"]) == 0.0 and float(terms["centerness"]) == 0.0
  assert np.isfinite(float(terms["cls"]))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_tiny_overfit_detects_the_boxes():
  images, targets = _synthetic()
  params, opt_state = _init(images)
  first = None
  for _ in range(300):
    params, opt_state, terms, _ = _train_step(params, opt_state, images, targets)
    first = first or {k: float(v) for k, v in terms.items()}
  assert float(terms["cls"]) < 0.1 * first["cls"] and float(terms["box"]) < 0.3
  det = _check_detections(_detect(params, images), 2, 200, 64)
  for i in range(2):
    gt = targets["boxes"][i][targets["mask"][i]]
    gt_cls = targets["labels"][i][targets["mask"][i]]
    n = len(gt)
    top_boxes, top_cls = det["boxes"][i, :n], det["classes"][i, :n]
    assert (det["scores"][i, :n] > 0.3).all()
    for box, c in zip(gt, gt_cls):  # each gt box is found among the top n, with its class
      ious = [np_iou(box, b) if k == c else 0.0 for b, k in zip(top_boxes, top_cls)]
      assert max(ious) > 0.5, (box, c, top_boxes, top_cls)


# ------------------------------------------------------------------ configurations and errors


def test_batchnorm_backbone_and_more_levels_trace():
  model = fcos.FCOS(num_classes=3, backbone=backbones.ResNetBackbone("resnet18"),
                    fpn=fpn.FPN(16, 3, 7), max_level=7, head_channels=16, num_convs=1,
                    box_activation="exp")
  images = jnp.zeros((1, 128, 128, 3))
  targets = {"boxes": jnp.zeros((1, 5, 4)), "labels": -jnp.ones((1, 5), jnp.int32),
             "mask": jnp.zeros((1, 5), bool)}
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
  assert set(variables) == {"params", "batch_stats"}
  assert {f"scale_{l}" for l in range(3, 8)} <= set(variables["params"])
  terms, updates = jax.eval_shape(
      lambda v: model.apply(v, images, targets, train=True, mutable=["batch_stats"]), variables)
  assert set(updates) == {"batch_stats"} and terms["cls"].shape == ()
  det = jax.eval_shape(lambda v: model.apply(v, images, train=False), variables)
  assert det["boxes"].shape == (1, 100, 4)


def test_bad_inputs_raise_clear_errors():
  images = jnp.zeros((1, 48, 48, 3))
  with pytest.raises(ValueError, match="divisible by 32"):
    jax.eval_shape(lambda: MODEL.init(jax.random.key(0), images, train=False))
  vgg = fcos.FCOS(num_classes=2, backbone=backbones.VGG16Backbone(), fpn=None)
  with pytest.raises(ValueError, match=r"need feature levels \[3, 5\]"):
    jax.eval_shape(lambda: vgg.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  images = jnp.zeros((1, 64, 64, 3))
  variables = jax.eval_shape(lambda: MODEL.init(jax.random.key(0), images, train=False))
  bad = {"boxes": jnp.zeros((1, 3, 4)), "labels": jnp.zeros((1, 2), jnp.int32),
         "mask": jnp.ones((1, 3), bool)}
  with pytest.raises(ValueError, match="labels"):
    jax.eval_shape(lambda v: MODEL.apply(v, images, bad, train=True), variables)
  with pytest.raises(ValueError, match="size_ranges"):
    jax.eval_shape(lambda: MODEL.clone(size_ranges=((0, 1),)).init(
        jax.random.key(0), images, train=False))


def test_create_detector_from_a_spec():
  from jaxvision.models import detection
  model = detection.create_detector(
      "FCOS", num_classes=3, backbone={"name": "resnet_gn", "widths": (8, 16, 32, 32)},
      fpn={"num_channels": 16, "groups": 4}, max_level=6, head_channels=16, dtype=jnp.float32)
  assert isinstance(model.backbone, backbones.ResNetGN) and model.backbone.widths == (8, 16, 32, 32)
  assert (model.fpn.num_channels, model.fpn.min_level, model.fpn.max_level) == (16, 3, 6)
  assert model.max_level == 6 and model.num_classes == 3
  images = jnp.zeros((1, 64, 64, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
  assert {f"scale_{l}" for l in range(3, 7)} <= set(variables["params"])
  default = detection.create_detector("FCOS", num_classes=2)
  assert isinstance(default.backbone, backbones.ResNetGN) and isinstance(default.fpn, fpn.FPN)
  frcnn = detection.create_detector("FasterRCNN", num_classes=2, backbone={"name": "vgg16"},
                                    fpn=None)
  assert isinstance(frcnn.backbone, backbones.VGG16Backbone) and frcnn.fpn is None
  with pytest.raises(ValueError, match="known detectors"):
    detection.create_detector("YOLO", num_classes=2)
  with pytest.raises(ValueError, match="float32"):
    detection.create_detector("FCOS", num_classes=2, dtype=jnp.bfloat16)
  with pytest.raises(ValueError, match="known backbones"):
    detection.create_detector("FCOS", num_classes=2, backbone={"name": "resnet7"})
