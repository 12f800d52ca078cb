"""Faster R-CNN box head (second stage) with static shapes.

Follows torchvision's ``RoIHeads`` for the numbers (IoU 0.5 foreground, 25% foreground
sampling, box-coder weights ``(10, 10, 5, 5)``, smooth-L1 normalised by the sampled RoIs) and
tensorflow/tpu ``models/official/detection`` for the shapes (``ops/target_ops.py``: ground
truth appended to the proposals and a fixed number of sampled RoIs; ``ops/postprocess_ops.py``:
per-class top-k, padded NMS, global top-k to ``D`` detections padded with score -1).

Boxes are ``xyxy`` canvas pixels. Class indexing inside the head: 0 is background, class
``c`` of the data (``0 <= c < num_classes``) is ``c + 1``; detections report ``c`` again.

Pieces:

* :func:`sample_rois`: one image's RoIs ``[R, 4]`` with class and regression targets.
* :class:`BoxHead`: RoIAlign 7x7 (one or several levels), an FC (or conv + FC) trunk, class
  logits ``[B, R, C + 1]`` and class-specific deltas ``[B, R, C, 4]``.
* :func:`box_losses`: softmax cross-entropy and smooth-L1 of the foreground RoIs.
* :func:`postprocess`: one image's detections, padded to ``D``.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxvision import losses
from jaxvision import ops
from jaxvision.models import layers

Array = jax.Array

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


class RoISamples(NamedTuple):
  """One image's sampled RoIs (leading ``[B]`` when vmapped).

  Attributes:
    rois: ``[R, 4]`` float32 xyxy: sampled foreground RoIs first, then background, then
      padding (zeros) if there were fewer than ``R`` candidates.
    class_targets: ``[R]`` int32: 0 background, ``label + 1`` foreground, -1 padding.
    box_targets: ``[R, 4]`` float32 deltas (weights ``(10, 10, 5, 5)``) from each foreground
      RoI to its matched gt; 0 elsewhere.
    valid: ``[R]`` bool, True for sampled RoIs (not padding).
    indices: ``[R]`` int32 index of each RoI among the candidates (the ``K`` proposals, then
      the ``M`` gt boxes), -1 in padding.
    num_positive: int32 scalar, foreground RoIs.
  """
  rois: Array
  class_targets: Array
  box_targets: Array
  valid: Array
  indices: Array
  num_positive: Array


def sample_rois(rng: Array, proposals: Array, proposal_valid: Array, gt_boxes: Array,
                gt_labels: Array, gt_mask: Array, *, batch_size_per_image: int = 128,
                positive_fraction: float = 0.25, fg_iou_threshold: float = 0.5,
                bg_iou_threshold: float = 0.5, bg_iou_low_threshold: float = 0.0,
                weights: Sequence[float] = BOX_WEIGHTS) -> RoISamples:
  """Assigns and samples the RoIs of one image (``jax.vmap`` it for a batch).

  The valid ground-truth boxes are appended to the proposals. Each candidate takes the gt it
  overlaps most: IoU ``>= fg_iou_threshold`` is foreground with that gt's class; IoU in
  ``[bg_iou_low_threshold, bg_iou_threshold)`` is background. ``batch_size_per_image`` RoIs
  are drawn with at most ``positive_fraction`` foreground
  (:func:`jaxvision.ops.sample_balanced`).

  Args:
    rng: PRNG key for the sampler.
    proposals: ``[K, 4]`` xyxy proposals.
    proposal_valid: ``[K]`` bool, False for padded proposals (never sampled).
    gt_boxes: ``[M, 4]`` xyxy ground truth, padded.
    gt_labels: ``[M]`` int32 classes in ``[0, num_classes)``.
    gt_mask: ``[M]`` bool, True for real boxes.
    batch_size_per_image: ``R``.
    positive_fraction: at most ``floor(R * positive_fraction)`` foreground RoIs.
    fg_iou_threshold, bg_iou_threshold, bg_iou_low_threshold: assignment thresholds.
    weights: box-coder weights of the regression targets.

  Returns:
    :class:`RoISamples`.
  """
  proposals = jnp.asarray(proposals, jnp.float32)
  gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
  if (proposals.ndim != 2 or proposal_valid.shape != proposals.shape[:1] or gt_boxes.ndim != 2
      or gt_labels.shape != gt_boxes.shape[:1] or gt_mask.shape != gt_boxes.shape[:1]):
    raise ValueError(
        "sample_rois takes one image: proposals [K, 4], proposal_valid [K], gt_boxes [M, 4], "
        f"gt_labels [M], gt_mask [M] (vmap for a batch); got {tuple(proposals.shape)}, "
        f"{tuple(proposal_valid.shape)}, {tuple(gt_boxes.shape)}, {tuple(gt_labels.shape)}, "
        f"{tuple(gt_mask.shape)}.")
  candidates = jnp.concatenate([proposals, gt_boxes])  # [K + M, 4]
  cand_valid = jnp.concatenate([proposal_valid, gt_mask]).astype(bool)  # [K + M]
  iou = ops.box_iou(gt_boxes, candidates, mask1=gt_mask, mask2=cand_valid)  # [M, K + M]
  matches = ops.match(iou, high_threshold=fg_iou_threshold, low_threshold=bg_iou_threshold,
                      gt_valid=gt_mask)  # [K + M]
  best = iou.max(axis=0) if iou.shape[0] else jnp.zeros(cand_valid.shape)  # [K + M]
  positive = matches >= 0
  negative = ((matches == ops.BELOW_LOW_THRESHOLD) & (best >= bg_iou_low_threshold)
              & cand_valid)
  samples = ops.sample_balanced(rng, positive, negative, num_samples=batch_size_per_image,
                                positive_fraction=positive_fraction)
  valid = samples.indices >= 0  # [R]
  idx = jnp.maximum(samples.indices, 0)
  rois = jnp.where(valid[:, None], candidates[idx], 0.0)  # [R, 4]
  roi_matches = matches[idx]  # [R]
  fg = valid & (roi_matches >= 0)
  gt_idx = jnp.maximum(roi_matches, 0)
  class_targets = jnp.where(fg, gt_labels[gt_idx].astype(jnp.int32) + 1, 0)
  class_targets = jnp.where(valid, class_targets, -1)
  box_targets = ops.encode_boxes(gt_boxes[gt_idx], rois, weights)
  box_targets = jnp.where(fg[:, None], box_targets, 0.0)
  return RoISamples(rois, class_targets, box_targets, valid, samples.indices,
                    samples.num_positive)


def box_losses(class_logits: Array, box_deltas: Array, samples: RoISamples, *,
               beta: float = 1.0 / 9.0) -> tuple[Array, Array]:
  """Box-head losses of a batch (torchvision's ``fastrcnn_loss`` normalisation).

  Args:
    class_logits: ``[B, R, C + 1]``.
    box_deltas: ``[B, R, C, 4]`` class-specific deltas.
    samples: batched :class:`RoISamples`.
    beta: smooth-L1 beta.

  Returns:
    ``(cls_loss, box_loss)`` float32 scalars: softmax cross-entropy averaged over the sampled
    RoIs; smooth-L1 of the foreground RoIs' deltas for their own class, summed over the
    coordinates and RoIs and divided by ``max(1, number of sampled RoIs)``.
  """
  valid = samples.valid  # [B, R]
  norm = jnp.maximum(valid.sum(), 1).astype(jnp.float32)
  labels = jnp.maximum(samples.class_targets, 0)
  ce = optax.softmax_cross_entropy_with_integer_labels(class_logits.astype(jnp.float32), labels)
  cls_loss = jnp.where(valid, ce, 0.0).sum() / norm
  fg = samples.class_targets > 0  # [B, R]
  cls_idx = jnp.maximum(samples.class_targets - 1, 0)[..., None, None]  # [B, R, 1, 1]
  pred = jnp.take_along_axis(box_deltas, cls_idx, axis=2)[:, :, 0]  # [B, R, 4]
  l1 = losses.smooth_l1_loss(pred, samples.box_targets, beta=beta).sum(-1)  # [B, R]
  box_loss = jnp.where(fg, l1, 0.0).sum() / norm
  return cls_loss, box_loss


def roi_levels(levels: Sequence[int], max_level: int = 5) -> list[int]:
  """The levels RoIs are pooled from: those ``<= max_level`` (torchvision pools P2..P5, not P6),
  or the lowest level if none is; they must be consecutive."""
  levels = sorted(levels)
  chosen = [lv for lv in levels if lv <= max_level] or levels[:1]
  if chosen != list(range(chosen[0], chosen[0] + len(chosen))):
    raise ValueError(f"RoI pooling needs consecutive feature levels; got {chosen}.")
  return chosen


class BoxHead(nn.Module):
  """RoIAlign + trunk + class and box predictors.

  Each RoI is pooled ``roi_size x roi_size`` (``sampling_ratio`` 2, ``aligned=True``) from
  one level: the FPN level of its size (:func:`jaxvision.ops.multilevel_roi_align`, canonical
  224 px at level 4) when several levels are pooled, else the single level (a VGG16's level 4).
  Trunk: ``num_convs`` 3x3 convs of ``conv_dim`` channels with GroupNorm and ReLU (0: none),
  then ``num_fc`` fully connected layers of ``fc_dim`` with ReLU (torchvision's ``TwoMLPHead``
  for the defaults).

  Attributes:
    num_classes: foreground classes ``C``.
    fc_dim: width of the FC layers.
    num_fc: number of FC layers.
    num_convs: 3x3 conv layers before the FC layers.
    conv_dim: their channels.
    num_groups: GroupNorm groups of the convs.
    roi_size: RoIAlign output size.
    sampling_ratio: RoIAlign samples per bin axis.
    max_level: highest level RoIs are pooled from.
  """
  num_classes: int
  fc_dim: int = 1024
  num_fc: int = 2
  num_convs: int = 0
  conv_dim: int = 256
  num_groups: int = 32
  roi_size: int = 7
  sampling_ratio: int = 2
  max_level: int = 5

  @nn.compact
  def __call__(self, features: Mapping[int, Array], rois: Array, *,
               train: bool = False) -> tuple[Array, Array]:
    """Predicts classes and deltas of RoIs.

    Args:
      features: level -> ``[B, H_l, W_l, C_f]`` map of stride ``2**l``.
      rois: ``[B, R, 4]`` xyxy canvas pixels.
      train: unused (no dropout or BatchNorm); kept for the common signature.

    Returns:
      ``(class_logits [B, R, num_classes + 1], box_deltas [B, R, num_classes, 4])`` float32.
    """
    del train
    if rois.ndim != 3 or rois.shape[-1] != 4:
      raise ValueError(f"BoxHead expects rois [B, R, 4]; got {tuple(rois.shape)}.")
    levels = roi_levels(list(features), self.max_level)
    maps = [features[lv] for lv in levels]
    if len(maps) == 1:
      x = ops.roi_align(maps[0], rois, output_size=self.roi_size,
                        spatial_scale=2.0 ** -levels[0], sampling_ratio=self.sampling_ratio,
                        aligned=True)
    else:
      x = ops.multilevel_roi_align(maps, rois, output_size=self.roi_size,
                                   spatial_scales=[2.0 ** -lv for lv in levels],
                                   sampling_ratio=self.sampling_ratio, aligned=True)
    b, r = rois.shape[:2]
    x = x.reshape((b * r,) + x.shape[2:])  # [B * R, s, s, C_f]
    for i in range(self.num_convs):
      x = layers.Conv(self.conv_dim, (3, 3), padding="SAME", use_bias=False, name=f"conv{i}")(x)
      x = nn.relu(nn.GroupNorm(num_groups=self.num_groups, name=f"norm{i}")(x))
    x = x.reshape(b * r, -1)
    for i in range(self.num_fc):
      x = nn.relu(nn.Dense(self.fc_dim, name=f"fc{i}")(x))
    logits = nn.Dense(self.num_classes + 1, kernel_init=nn.initializers.normal(0.01),
                      name="cls_score")(x)
    deltas = nn.Dense(self.num_classes * 4, kernel_init=nn.initializers.normal(0.001),
                      name="bbox_pred")(x)
    return (logits.reshape(b, r, -1).astype(jnp.float32),
            deltas.reshape(b, r, self.num_classes, 4).astype(jnp.float32))


class Detections(NamedTuple):
  """One image's detections (leading ``[B]`` when vmapped), by decreasing score.

  Attributes:
    boxes: ``[D, 4]`` float32 xyxy inside the canvas; 0 in padding.
    scores: ``[D]`` float32, -1 in padding.
    classes: ``[D]`` int32 in ``[0, num_classes)``, -1 in padding.
    num_valid: int32 scalar.
  """
  boxes: Array
  scores: Array
  classes: Array
  num_valid: Array


def postprocess(class_logits: Array, box_deltas: Array, rois: Array, roi_valid: Array,
                image_size: tuple[int, int], *, score_threshold: float = 0.05,
                nms_iou_threshold: float = 0.5, max_detections: int = 100,
                pre_nms_top_k: int = 1000, min_size: float = 1e-2,
                weights: Sequence[float] = BOX_WEIGHTS) -> Detections:
  """Detections of one image from the box head's outputs (``jax.vmap`` it for a batch).

  Softmax scores; every RoI decoded with each class's deltas and clipped to the canvas; boxes
  below ``min_size`` and padded RoIs dropped; per class the ``min(pre_nms_top_k, R)`` best
  scores; class-aware greedy NMS at ``nms_iou_threshold`` over scores ``> score_threshold``
  (:func:`jaxvision.ops.batched_nms`), whose first ``max_detections`` selections are the global
  top-k.

  Args:
    class_logits: ``[R, C + 1]`` (index 0 background).
    box_deltas: ``[R, C, 4]``.
    rois: ``[R, 4]`` xyxy.
    roi_valid: ``[R]`` bool.
    image_size: ``(H, W)`` canvas size (static).
    score_threshold, nms_iou_threshold, max_detections, pre_nms_top_k, min_size: as above.
    weights: box-coder weights.

  Returns:
    :class:`Detections` with ``D = max_detections``.
  """
  r, c1 = class_logits.shape
  num_classes = c1 - 1
  if box_deltas.shape != (r, num_classes, 4) or rois.shape != (r, 4):
    raise ValueError(f"postprocess takes one image: class_logits [R, C + 1], box_deltas "
                     f"[R, C, 4], rois [R, 4]; got {tuple(class_logits.shape)}, "
                     f"{tuple(box_deltas.shape)}, {tuple(rois.shape)}.")
  probs = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)[:, 1:]  # [R, C]
  boxes = ops.decode_boxes(box_deltas.astype(jnp.float32), rois[:, None, :], weights)
  boxes = ops.clip_boxes(boxes, image_size)  # [R, C, 4]
  ok = roi_valid[:, None] & ~ops.small_box_mask(boxes, min_size)  # [R, C]
  scores = jnp.where(ok, probs, -1.0).T  # [C, R]
  k = min(pre_nms_top_k, r)
  top_scores, top_idx = lax.top_k(scores, k)  # [C, k]
  top_boxes = jnp.take_along_axis(boxes.transpose(1, 0, 2), top_idx[..., None], axis=1)
  classes = jnp.broadcast_to(jnp.arange(num_classes, dtype=jnp.int32)[:, None], (num_classes, k))
  top_scores, top_boxes, classes = (top_scores.reshape(-1), top_boxes.reshape(-1, 4),
                                    classes.reshape(-1))
  keep, num_valid = ops.batched_nms(top_boxes, top_scores, classes,
                                    iou_threshold=nms_iou_threshold, max_output=max_detections,
                                    score_threshold=score_threshold,
                                    valid_mask=top_scores >= 0)
  valid = keep >= 0
  safe = jnp.maximum(keep, 0)
  return Detections(jnp.where(valid[:, None], top_boxes[safe], 0.0),
                    jnp.where(valid, top_scores[safe], -1.0),
                    jnp.where(valid, classes[safe], -1), num_valid.astype(jnp.int32))
