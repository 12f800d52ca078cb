"""FCOS: Fully Convolutional One-Stage object detection (Tian et al. 2019), static shapes.

With the usual improvements of the FCOS repository ("FCOS imprv"): centerness predicted from the
regression tower, GIoU box loss, center sampling (radius 1.5 strides), regression targets
divided by the level's stride, a learned scale per level, GroupNorm in the heads.

Locations: level ``l`` (stride ``s = 2**l``, map ``H_l x W_l``) has one location per cell at
``(x * s + s // 2, y * s + s // 2)`` canvas pixels, ordered level, row ``y``, column ``x``
(a head output ``[B, H_l, W_l, C]`` reshaped to ``[B, H_l * W_l, C]`` and concatenated over
levels). A location regresses its distances ``(l, t, r, b)`` to the four sides of a box.

The detector contract (shared with ``FasterRCNN``): ``FCOS(...)(images, targets=None, *,
train)``

* ``images``: ``float32 [B, S, S, 3]`` (any ``H, W`` divisible by ``2**max_level``).
* ``targets=None`` -> detections: ``boxes float32 [B, D, 4]`` xyxy canvas pixels clipped to the
  canvas, ``scores float32 [B, D]`` decreasing, -1 in padding, ``classes int32 [B, D]``, -1 in
  padding, ``num_valid int32 [B]``; ``D = max_detections``.
* ``targets = {"boxes" [B, M, 4] xyxy, "labels" int32 [B, M], "mask" bool [B, M]}`` -> loss
  terms ``{"cls", "box", "centerness"}`` (float32 scalars, already weighted; their sum is the
  training loss), finite for images without boxes.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxvision import losses
from jaxvision import ops
from jaxvision.models.detection.backbones import group_norm_groups
from jaxvision.models.layers import Conv

Array = jax.Array

# exp() of the regression output is clipped here (stride units) so it never overflows.
EXP_CLIP = math.log(1000.0)
BOX_ACTIVATIONS = ("relu", "exp")


def default_size_ranges(min_level: int, max_level: int) -> tuple[tuple[float, float], ...]:
  """FCOS's regression ranges for levels ``min_level..max_level``.

  Level ``l`` takes objects whose largest regression distance lies in ``[2**(l+2), 2**(l+3)]``
  pixels (P3: 32..64, ... as FCOS's -1/64/128/256/512/inf for P3..P7); the lowest level starts
  at -1 and the highest is unbounded, so every object size has a level.
  """
  ranges = []
  for level in range(min_level, max_level + 1):
    lo = -1.0 if level == min_level else float(2 ** (level + 2))
    hi = math.inf if level == max_level else float(2 ** (level + 3))
    ranges.append((lo, hi))
  return tuple(ranges)


def fcos_points(shapes: Sequence[tuple[int, int]], strides: Sequence[int]
                ) -> tuple[np.ndarray, np.ndarray]:
  """Locations of all levels (NumPy constants).

  Args:
    shapes: per level ``(H_l, W_l)``.
    strides: per level the stride in pixels.

  Returns:
    ``points [N, 2]`` float32 ``(x, y)`` canvas pixels (``x * s + s // 2``) in level, row,
    column order, and ``point_strides [N]`` float32, ``N = sum_l H_l * W_l``.
  """
  points, point_strides = [], []
  for (h, w), s in zip(shapes, strides):
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    pts = np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1) * s + s // 2
    points.append(pts.astype(np.float32))
    point_strides.append(np.full((h * w,), s, np.float32))
  return np.concatenate(points, 0), np.concatenate(point_strides, 0)


def fcos_targets(points: Array, strides: Array, ranges: Array, gt_boxes: Array,
                 gt_labels: Array, gt_mask: Array, radius: float = 1.5) -> dict[str, Array]:
  """FCOS target assignment for one image (``jax.vmap`` it over a batch).

  A location is a candidate for a ground-truth box when (1) it lies strictly inside the box's
  center region, ``center +- radius * stride`` clipped to the box (``radius <= 0``: strictly
  inside the box itself); (2) the largest of its distances ``(l, t, r, b)`` to the box's sides
  lies in its level's range, ``ranges[n, 0] <= max <= ranges[n, 1]``; (3) the box is real
  (``gt_mask``). Among its candidates it takes the one of smallest area (ties: the lower
  index); a location without candidates is a negative. Zero-area boxes contain no location
  strictly, so they are never assigned.

  Args:
    points: ``[N, 2]`` float ``(x, y)`` locations in canvas pixels.
    strides: ``[N]`` float, the stride of each location's level.
    ranges: ``[N, 2]`` float, ``(lo, hi)`` regression range of each location's level (pixels).
    gt_boxes: ``[M, 4]`` xyxy canvas pixels (anything where ``gt_mask`` is False).
    gt_labels: ``[M]`` int class ids.
    gt_mask: ``[M]`` bool, True for real boxes.
    radius: center-sampling radius in strides (static Python float).

  Returns:
    dict of
      ``labels [N] int32``: the assigned box's class, -1 for negatives;
      ``matched [N] int32``: the assigned box's index, -1 for negatives;
      ``ltrb [N, 4] float32``: distances ``(l, t, r, b)`` in pixels to the assigned box's sides
        (0 for negatives);
      ``centerness [N] float32``: ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``
        (0 for negatives).
  """
  points = jnp.asarray(points, jnp.float32)
  gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
  strides = jnp.asarray(strides, jnp.float32)
  ranges = jnp.asarray(ranges, jnp.float32)
  x = points[:, 0:1]  # [N, 1]
  y = points[:, 1:2]
  x1, y1, x2, y2 = (gt_boxes[None, :, i] for i in range(4))  # [1, M] each
  l, t, r, b = x - x1, y - y1, x2 - x, y2 - y  # [N, M] each
  if radius > 0:
    rad = strides[:, None] * radius  # [N, 1]
    cx, cy = 0.5 * (x1 + x2), 0.5 * (y1 + y2)
    inside = ((x > jnp.maximum(cx - rad, x1)) & (x < jnp.minimum(cx + rad, x2))
              & (y > jnp.maximum(cy - rad, y1)) & (y < jnp.minimum(cy + rad, y2)))
  else:
    inside = (l > 0) & (t > 0) & (r > 0) & (b > 0)
  max_reg = jnp.maximum(jnp.maximum(l, t), jnp.maximum(r, b))  # [N, M]
  candidate = (inside & (max_reg >= ranges[:, 0:1]) & (max_reg <= ranges[:, 1:2])
               & jnp.asarray(gt_mask, bool)[None, :])  # [N, M]
  area = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])  # [M]
  key = jnp.where(candidate, area[None, :], jnp.inf)  # [N, M]
  best = jnp.min(key, axis=1)  # [N]
  positive = best < jnp.inf
  m = gt_boxes.shape[0]
  first = jnp.min(jnp.where(key == best[:, None], jnp.arange(m, dtype=jnp.int32), m), axis=1)
  matched = jnp.where(positive, first, -1).astype(jnp.int32)  # [N]
  box = gt_boxes[jnp.clip(first, 0, m - 1)]  # [N, 4]
  ltrb = jnp.stack([points[:, 0] - box[:, 0], points[:, 1] - box[:, 1],
                    box[:, 2] - points[:, 0], box[:, 3] - points[:, 1]], axis=1)
  ltrb = jnp.where(positive[:, None], ltrb, 0.0)
  safe = jnp.where(positive[:, None], ltrb, 1.0)
  lr = jnp.minimum(safe[:, 0], safe[:, 2]) / jnp.maximum(safe[:, 0], safe[:, 2])
  tb = jnp.minimum(safe[:, 1], safe[:, 3]) / jnp.maximum(safe[:, 1], safe[:, 3])
  centerness = jnp.where(positive, jnp.sqrt(lr * tb), 0.0)
  labels = jnp.where(positive, jnp.asarray(gt_labels, jnp.int32)[jnp.clip(first, 0, m - 1)], -1)
  return {"labels": labels.astype(jnp.int32), "matched": matched, "ltrb": ltrb,
          "centerness": centerness}


class FCOSHead(nn.Module):
  """The head shared by all levels: two towers of ``num_convs`` (3x3 conv, GroupNorm, ReLU).

  ``x [B, H, W, C] -> (cls_logits [B, H, W, num_classes], box [B, H, W, 4], ctr [B, H, W, 1])``
  (raw outputs; the box regression and centerness come from the box tower). Convs start from
  N(0, 0.01) kernels and zero biases; the class bias from ``-log((1 - p) / p)`` with
  ``p = prior_prob``.
  """
  num_classes: int
  channels: int = 128
  num_convs: int = 4
  groups: int = 32
  prior_prob: float = 0.01

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array, Array]:
    init = nn.initializers.normal(0.01)
    pad = ((1, 1), (1, 1))
    g = group_norm_groups(self.channels, self.groups)

    def tower(y, name):
      for i in range(self.num_convs):
        y = Conv(self.channels, (3, 3), padding=pad, kernel_init=init, name=f"{name}_conv{i}")(y)
        y = nn.relu(nn.GroupNorm(num_groups=g, name=f"{name}_norm{i}")(y))
      return y

    cls_feat, box_feat = tower(x, "cls"), tower(x, "box")
    bias = -math.log((1.0 - self.prior_prob) / self.prior_prob)
    cls_logits = Conv(self.num_classes, (3, 3), padding=pad, kernel_init=init,
                      bias_init=nn.initializers.constant(bias), name="cls_logits")(cls_feat)
    box = Conv(4, (3, 3), padding=pad, kernel_init=init, name="box_pred")(box_feat)
    ctr = Conv(1, (3, 3), padding=pad, kernel_init=init, name="centerness")(box_feat)
    return cls_logits, box, ctr


def _check_targets(targets: Mapping[str, Array], batch: int) -> tuple[Array, Array, Array]:
  missing = [k for k in ("boxes", "labels", "mask") if k not in targets]
  if missing:
    raise ValueError(f"FCOS targets need keys 'boxes', 'labels', 'mask'; missing {missing}")
  boxes, labels, mask = targets["boxes"], targets["labels"], targets["mask"]
  if (boxes.ndim != 3 or boxes.shape[0] != batch or boxes.shape[2] != 4
      or labels.shape != boxes.shape[:2] or mask.shape != boxes.shape[:2]):
    raise ValueError(f"FCOS targets must be boxes [B={batch}, M, 4], labels [B, M], mask [B, M]; "
                     f"found {tuple(boxes.shape)}, {tuple(labels.shape)}, {tuple(mask.shape)}")
  return boxes, labels, mask


class FCOS(nn.Module):
  """FCOS detector (see the module docstring for the call contract).

  Attributes:
    num_classes: foreground classes (labels in ``[0, num_classes)``).
    backbone: a module ``(images, *, train) -> {level: NHWC map of stride 2**level}``.
    fpn: a module mapping the backbone's dict to levels ``min_level..max_level`` of equal
      channels (``FPN``), or None to use the backbone's levels directly (they must then exist
      and have equal channels).
    min_level, max_level: pyramid levels used (strides ``2**min_level .. 2**max_level``).
    head_channels, num_convs, head_groups: the shared head's towers.
    size_ranges: per level ``(lo, hi)`` regression range in pixels; None:
      :func:`default_size_ranges`.
    center_sampling_radius: in strides (<= 0: every location inside a box is a candidate).
    focal_alpha, focal_gamma: the classification focal loss.
    box_activation: ``"relu"`` (FCOS imprv) or ``"exp"`` on ``scale_l * raw`` for the distances
      in strides.
    prior_prob: initial foreground probability of the class logits.
    cls_loss_weight, box_loss_weight, centerness_loss_weight: loss term weights.
    pre_nms_top_k: candidates per image (over all locations, levels and classes) before NMS.
    score_threshold: detections need a score ``> score_threshold``.
    nms_iou_threshold: class-aware NMS threshold.
    max_detections: ``D``, detections per image.

  Losses (normalised over the batch, ``N_pos = max(1, positives)``): ``cls``: focal loss summed
  over locations and classes / ``N_pos``; ``box``: GIoU loss of the positives weighted by their
  centerness targets / the sum of those (0 without positives); ``centerness``: binary
  cross-entropy of the positives / ``N_pos``. Detection scores are
  ``sqrt(sigmoid(cls) * sigmoid(centerness))``.
  """
  num_classes: int
  backbone: nn.Module
  fpn: nn.Module | None
  min_level: int = 3
  max_level: int = 5
  head_channels: int = 128
  num_convs: int = 4
  head_groups: int = 32
  size_ranges: Sequence[tuple[float, float]] | None = None
  center_sampling_radius: float = 1.5
  focal_alpha: float = 0.25
  focal_gamma: float = 2.0
  box_activation: str = "relu"
  prior_prob: float = 0.01
  cls_loss_weight: float = 1.0
  box_loss_weight: float = 1.0
  centerness_loss_weight: float = 1.0
  pre_nms_top_k: int = 1000
  score_threshold: float = 0.05
  nms_iou_threshold: float = 0.6
  max_detections: int = 100

  @property
  def levels(self) -> tuple[int, ...]:
    return tuple(range(self.min_level, self.max_level + 1))

  def _ranges(self) -> np.ndarray:
    ranges = (default_size_ranges(self.min_level, self.max_level) if self.size_ranges is None
              else tuple(tuple(r) for r in self.size_ranges))
    if len(ranges) != len(self.levels) or any(len(r) != 2 for r in ranges):
      raise ValueError(f"FCOS size_ranges needs one (lo, hi) pair per level {self.levels}; "
                       f"found {ranges}")
    return np.asarray(ranges, np.float32)

  @nn.compact
  def __call__(self, images: Array, targets: Mapping[str, Array] | None = None, *,
               train: bool):
    if images.ndim != 4:
      raise ValueError(f"FCOS expects images [B, H, W, C]; found shape {tuple(images.shape)}")
    if self.box_activation not in BOX_ACTIVATIONS:
      raise ValueError(f"FCOS box_activation must be one of {BOX_ACTIVATIONS}; found "
                       f"{self.box_activation!r}")
    stride_max = 2 ** self.max_level
    height, width = images.shape[1:3]
    if height % stride_max or width % stride_max:
      raise ValueError(f"FCOS with max_level={self.max_level} expects image height and width "
                       f"divisible by {stride_max}; found {height}x{width}")
    ranges = self._ranges()
    batch = images.shape[0]
    feats = self.backbone(images.astype(jnp.float32), train=train)
    if self.fpn is not None:
      feats = self.fpn(feats)
    missing = [level for level in self.levels if level not in feats]
    if missing:
      raise ValueError(f"FCOS levels {self.levels} need feature levels {missing}, which the "
                       f"{'FPN' if self.fpn is not None else 'backbone'} does not give "
                       f"(found {sorted(feats)})")

    head = FCOSHead(self.num_classes, self.head_channels, self.num_convs, self.head_groups,
                    self.prior_prob, name="head")
    cls_all, dist_all, ctr_all, shapes = [], [], [], []
    for level in self.levels:
      feat = feats[level]
      expected = (height // 2 ** level, width // 2 ** level)
      if feat.shape[1:3] != expected:
        raise ValueError(f"FCOS level {level} expects a feature map of size {expected}; found "
                         f"{tuple(feat.shape[1:3])}")
      cls_logits, box, ctr = head(feat)
      scale = self.param(f"scale_{level}", nn.initializers.ones, (), jnp.float32)
      box = box * scale
      dist = (nn.relu(box) if self.box_activation == "relu"
              else jnp.exp(jnp.minimum(box, EXP_CLIP)))  # strides
      n = expected[0] * expected[1]
      cls_all.append(cls_logits.reshape(batch, n, self.num_classes))
      dist_all.append(dist.reshape(batch, n, 4))
      ctr_all.append(ctr.reshape(batch, n))
      shapes.append(expected)
    cls_logits = jnp.concatenate(cls_all, 1).astype(jnp.float32)  # [B, N, K]
    dist = jnp.concatenate(dist_all, 1).astype(jnp.float32)  # [B, N, 4], in strides
    ctr_logits = jnp.concatenate(ctr_all, 1).astype(jnp.float32)  # [B, N]
    points, strides = fcos_points(shapes, [2 ** level for level in self.levels])
    point_ranges = np.concatenate(
        [np.broadcast_to(r, (h * w, 2)) for r, (h, w) in zip(ranges, shapes)], 0)

    if targets is None:
      return fcos_decode(cls_logits, dist, ctr_logits, points, strides, (height, width),
                         pre_nms_top_k=self.pre_nms_top_k, score_threshold=self.score_threshold,
                         iou_threshold=self.nms_iou_threshold,
                         max_detections=self.max_detections)
    gt_boxes, gt_labels, gt_mask = _check_targets(targets, batch)
    terms = fcos_losses(cls_logits, dist, ctr_logits, points, strides, point_ranges, gt_boxes,
                        gt_labels, gt_mask, radius=self.center_sampling_radius,
                        focal_alpha=self.focal_alpha, focal_gamma=self.focal_gamma)
    weights = {"cls": self.cls_loss_weight, "box": self.box_loss_weight,
               "centerness": self.centerness_loss_weight}
    return {k: weights[k] * v for k, v in terms.items()}



def fcos_losses(cls_logits: Array, dist: Array, ctr_logits: Array, points: Array, strides: Array,
                ranges: Array, gt_boxes: Array, gt_labels: Array, gt_mask: Array, *,
                radius: float = 1.5, focal_alpha: float = 0.25,
                focal_gamma: float = 2.0) -> dict[str, Array]:
  """FCOS loss terms (unweighted) from the head outputs of a batch.

  Targets come from :func:`fcos_targets` per image. With ``N_pos = max(1, positives in the
  batch)``:

  * ``cls``: :func:`jaxvision.losses.sigmoid_focal_loss` against one-hot labels (all zeros for
    negatives), summed over locations and classes, / ``N_pos``;
  * ``box``: :func:`jaxvision.losses.giou_loss` of the positives (boxes ``(-l, -t, r, b)``
    around their location, in strides), weighted by their centerness targets, / the sum of
    those weights (0 when there are no positives);
  * ``centerness``: binary cross-entropy of the centerness logits against the centerness
    targets, summed over positives, / ``N_pos``.

  Args:
    cls_logits: ``[B, N, K]`` class logits.
    dist: ``[B, N, 4]`` predicted ``(l, t, r, b)`` >= 0, in units of each location's stride.
    ctr_logits: ``[B, N]`` centerness logits.
    points, strides, ranges: ``[N, 2]``, ``[N]``, ``[N, 2]`` as in :func:`fcos_targets`.
    gt_boxes, gt_labels, gt_mask: ``[B, M, 4]`` xyxy pixels, ``[B, M]`` int, ``[B, M]`` bool.
    radius: center-sampling radius in strides.
    focal_alpha, focal_gamma: focal loss parameters.

  Returns:
    ``{"cls", "box", "centerness"}`` float32 scalars, finite for images without boxes.
  """
  k = cls_logits.shape[-1]
  assign = jax.vmap(functools.partial(fcos_targets, radius=float(radius)),
                    in_axes=(None, None, None, 0, 0, 0))
  t = jax.lax.stop_gradient(assign(points, strides, ranges, gt_boxes, gt_labels, gt_mask))
  positive = t["labels"] >= 0  # [B, N]
  pos_f = positive.astype(jnp.float32)
  num_pos = jnp.maximum(pos_f.sum(), 1.0)
  onehot = (t["labels"][..., None] == jnp.arange(k)).astype(jnp.float32)  # [B, N, K]
  cls = losses.sigmoid_focal_loss(cls_logits, onehot, alpha=focal_alpha,
                                  gamma=focal_gamma).sum() / num_pos
  strides = jnp.asarray(strides, jnp.float32)
  target = jnp.where(positive[..., None], t["ltrb"] / strides[None, :, None], 1.0)
  sign = jnp.array([-1.0, -1.0, 1.0, 1.0], jnp.float32)
  giou = losses.giou_loss(dist.astype(jnp.float32) * sign, target * sign)  # [B, N]
  weight = t["centerness"] * pos_f
  weight_sum = weight.sum()
  box = jnp.where(weight_sum > 0, (giou * weight).sum() / jnp.maximum(weight_sum, 1e-12), 0.0)
  ctr_t = t["centerness"]
  x = ctr_logits.astype(jnp.float32)
  bce = ctr_t * jax.nn.softplus(-x) + (1.0 - ctr_t) * jax.nn.softplus(x)
  centerness = (bce * pos_f).sum() / num_pos
  return {"cls": cls, "box": box, "centerness": centerness}


def fcos_decode(cls_logits: Array, dist: Array, ctr_logits: Array, points: Array,
                strides: Array, canvas: tuple[int, int], *, pre_nms_top_k: int = 1000,
                score_threshold: float = 0.05, iou_threshold: float = 0.6,
                max_detections: int = 100) -> dict[str, Array]:
  """Detections from FCOS head outputs, with static shapes.

  Scores ``sqrt(sigmoid(cls) * sigmoid(ctr))`` for every (location, class); the
  ``pre_nms_top_k`` best per image over all locations and classes (``lax.top_k``: ties to the
  lower flat index ``location * K + class``); boxes ``(x - l, y - t, x + r, y + b)`` with the
  distances times the stride, clipped to the canvas; class-aware greedy NMS
  (:func:`jaxvision.ops.batched_nms`: IoU ``> iou_threshold`` suppresses, only scores
  ``> score_threshold`` are candidates), which also keeps the ``max_detections`` best.

  Args:
    cls_logits: ``[B, N, K]``; dist: ``[B, N, 4]`` ``(l, t, r, b)`` in strides;
      ctr_logits: ``[B, N]``; points: ``[N, 2]`` ``(x, y)`` pixels; strides: ``[N]``.
    canvas: ``(height, width)`` in pixels (static).

  Returns:
    ``boxes float32 [B, D, 4]`` xyxy (0 in padding), ``scores float32 [B, D]`` decreasing (-1
    in padding), ``classes int32 [B, D]`` (-1 in padding), ``num_valid int32 [B]``;
    ``D = max_detections``.
  """
  batch, n, k = cls_logits.shape
  scores = jnp.sqrt(jax.nn.sigmoid(cls_logits.astype(jnp.float32))
                    * jax.nn.sigmoid(ctr_logits.astype(jnp.float32))[..., None])  # [B, N, K]
  top = min(int(pre_nms_top_k), n * k)
  top_scores, top_idx = lax.top_k(scores.reshape(batch, n * k), top)  # [B, T]
  loc = top_idx // k
  classes = (top_idx % k).astype(jnp.int32)
  strides = jnp.asarray(strides, jnp.float32)
  d = jnp.take_along_axis(dist.astype(jnp.float32), loc[..., None], axis=1)
  d = d * strides[loc][..., None]  # [B, T, 4] pixels
  p = jnp.asarray(points, jnp.float32)[loc]  # [B, T, 2]
  boxes = ops.clip_boxes(jnp.concatenate([p - d[..., :2], p + d[..., 2:]], axis=-1), canvas)
  nms = jax.vmap(lambda b, s, c: ops.batched_nms(
      b, s, c, iou_threshold=iou_threshold, max_output=int(max_detections),
      score_threshold=score_threshold))
  keep, num_valid = nms(boxes, top_scores, classes)  # [B, D], [B]
  valid = keep >= 0
  safe = jnp.maximum(keep, 0)
  out_boxes = jnp.take_along_axis(boxes, safe[..., None], axis=1)
  return {"boxes": jnp.where(valid[..., None], out_boxes, 0.0).astype(jnp.float32),
          "scores": jnp.where(valid, jnp.take_along_axis(top_scores, safe, axis=1),
                              -1.0).astype(jnp.float32),
          "classes": jnp.where(valid, jnp.take_along_axis(classes, safe, axis=1), -1
                               ).astype(jnp.int32),
          "num_valid": num_valid.astype(jnp.int32)}
