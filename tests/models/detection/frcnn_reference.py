"""NumPy float64 references for the Faster R-CNN tests (written from the papers' and
torchvision's definitions, independent of jaxvision.ops)."""

import numpy as np


def iou(a, b):
  """[N, 4] x [M, 4] xyxy -> [N, M] float64 IoU (0 where the union is empty)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
  area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
  out = np.zeros((len(a), len(b)))
  for i in range(len(a)):
    for j in range(len(b)):
      w = min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0])
      h = min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1])
      inter = max(w, 0.0) * max(h, 0.0)
      union = area_a[i] + area_b[j] - inter
      out[i, j] = inter / union if union > 0 else 0.0
  return out


def encode(gt, boxes, weights):
  """Faster R-CNN deltas of gt [N, 4] relative to boxes [N, 4] (float64)."""
  gt, boxes = np.asarray(gt, np.float64), np.asarray(boxes, np.float64)
  wx, wy, ww, wh = weights
  bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  bx, by = boxes[:, 0] + bw / 2, boxes[:, 1] + bh / 2
  gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
  gx, gy = gt[:, 0] + gw / 2, gt[:, 1] + gh / 2
  return np.stack([wx * (gx - bx) / bw, wy * (gy - by) / bh, ww * np.log(gw / bw),
                   wh * np.log(gh / bh)], axis=1)


def decode(deltas, boxes, weights):
  """Inverse of :func:`encode` with torchvision's clip of dw, dh at log(1000/16)."""
  deltas, boxes = np.asarray(deltas, np.float64), np.asarray(boxes, np.float64)
  wx, wy, ww, wh = weights
  bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  bx, by = boxes[:, 0] + bw / 2, boxes[:, 1] + bh / 2
  clip = np.log(1000.0 / 16)
  cx, cy = deltas[:, 0] / wx * bw + bx, deltas[:, 1] / wy * bh + by
  w = np.exp(np.minimum(deltas[:, 2] / ww, clip)) * bw
  h = np.exp(np.minimum(deltas[:, 3] / wh, clip)) * bh
  return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def clip(boxes, height, width):
  boxes = np.array(boxes, np.float64)
  boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
  boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
  return boxes


def greedy_nms(boxes, scores, threshold):
  """Indices kept by greedy NMS (descending score, drop IoU > threshold)."""
  order = list(np.argsort(-np.asarray(scores), kind="stable"))
  ious = iou(boxes, boxes)
  keep = []
  while order:
    i = order.pop(0)
    keep.append(i)
    order = [j for j in order if ious[i, j] <= threshold]
  return keep


def match(quality, high, low, allow_low_quality):
  """torchvision Matcher on quality [M, N] (valid gt rows only) -> [N] (-1 below, -2 between).

  Low-quality matches: for each gt with a positive best IoU, anchors reaching it.
  """
  m, n = quality.shape
  if m == 0:
    return np.full(n, -1)
  best = quality.max(0)
  arg = quality.argmax(0)
  out = np.where(best >= high, arg, np.where(best < low, -1, -2))
  if allow_low_quality:
    for g in range(m):
      top = quality[g].max()
      if top > 0:
        for j in np.nonzero(quality[g] == top)[0]:
          out[j] = arg[j]
  return out
