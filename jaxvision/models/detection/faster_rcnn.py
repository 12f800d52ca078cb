"""Faster R-CNN (Ren et al., 2015) with static shapes, as one Linen module.

Backbone (``dict[int, Array]``, level -> NHWC map of stride ``2**level``), optional FPN, region
proposal network (:mod:`jaxvision.models.detection.rpn`) and box head
(:mod:`jaxvision.models.detection.roi_heads`). Every stage keeps a fixed size, in the style of
tensorflow/tpu ``models/official/detection``: ``P`` proposals per image from per-level top-k
and padded NMS, ``R`` sampled RoIs per image in training, ``D`` padded detections in
inference. Defaults are torchvision's ``fasterrcnn_resnet50_fpn`` except
``box_batch_size_per_image`` (128) and ``rpn_post_nms_top_k_train`` (1000).

Boxes are ``xyxy`` canvas pixels; ``num_classes`` counts foreground classes only.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision import ops
from jaxvision.models import layers
from jaxvision.models.detection import roi_heads
from jaxvision.models.detection import rpn

Array = jax.Array


class FasterRCNN(nn.Module):
  """Two-stage detector.

  Attributes:
    num_classes: foreground classes (labels in ``[0, num_classes)``).
    backbone: module, ``backbone(images, train=...) -> dict[int, Array]``.
    fpn: module called on the backbone's dict (returning such a dict), or None to use the
      backbone's levels directly (e.g. VGG16's level 4: a single-level RPN and box head).
    rpn_anchor_sizes: anchor sizes per level, lowest level first (a tuple per level, or one
      number per level); None: :func:`rpn.default_anchor_sizes` of the levels present
      (32..512 over P2..P6; five sizes 32..512 on a single stride-16 level).
    rpn_aspect_ratios: height/width ratios, shared by all levels (or a tuple per level); every
      level must have the same number of anchors per location.
    rpn_conv_dim: channels of the RPN's 3x3 conv (None: the features').
    rpn_pre_nms_top_k_train / _test: candidates per level before NMS.
    rpn_post_nms_top_k_train / _test: proposals per image ``P``. The ``_train`` values are used
      when targets are given (loss), the ``_test`` values for detections.
    rpn_nms_iou_threshold: proposal NMS IoU.
    rpn_min_size: smallest proposal width/height in pixels.
    rpn_fg_iou_threshold, rpn_bg_iou_threshold: anchor matching thresholds.
    rpn_batch_size_per_image, rpn_positive_fraction: anchor sampling.
    rpn_box_loss_beta: smooth-L1 beta of the RPN box loss.
    box_fg_iou_threshold, box_bg_iou_threshold, box_bg_iou_low_threshold: RoI assignment.
    box_batch_size_per_image, box_positive_fraction: RoI sampling (``R``).
    box_roi_size, box_sampling_ratio, box_max_level: RoIAlign settings.
    box_fc_dim, box_num_fc, box_num_convs, box_conv_dim, box_num_groups: box head trunk.
    box_pre_nms_top_k: candidates per class before the detection NMS.
    box_loss_beta: smooth-L1 beta of the box loss.
    box_min_size: smallest detection width/height in pixels.
    max_detections: ``D``.
    score_threshold: detections need a class probability above this.
    nms_iou_threshold: class-aware detection NMS IoU.
  """
  num_classes: int
  backbone: nn.Module
  fpn: nn.Module | None = None
  rpn_anchor_sizes: Sequence[Any] | None = None
  rpn_aspect_ratios: Sequence[Any] = (0.5, 1.0, 2.0)
  rpn_conv_dim: int | None = None
  rpn_pre_nms_top_k_train: int = 2000
  rpn_pre_nms_top_k_test: int = 1000
  rpn_post_nms_top_k_train: int = 1000
  rpn_post_nms_top_k_test: int = 1000
  rpn_nms_iou_threshold: float = 0.7
  rpn_min_size: float = 1e-3
  rpn_fg_iou_threshold: float = 0.7
  rpn_bg_iou_threshold: float = 0.3
  rpn_batch_size_per_image: int = 256
  rpn_positive_fraction: float = 0.5
  rpn_box_loss_beta: float = 1.0 / 9.0
  box_fg_iou_threshold: float = 0.5
  box_bg_iou_threshold: float = 0.5
  box_bg_iou_low_threshold: float = 0.0
  box_batch_size_per_image: int = 128
  box_positive_fraction: float = 0.25
  box_roi_size: int = 7
  box_sampling_ratio: int = 2
  box_max_level: int = 5
  box_fc_dim: int = 1024
  box_num_fc: int = 2
  box_num_convs: int = 0
  box_conv_dim: int = 256
  box_num_groups: int = 32
  box_pre_nms_top_k: int = 1000
  box_loss_beta: float = 1.0 / 9.0
  box_min_size: float = 1e-2
  max_detections: int = 100
  score_threshold: float = 0.05
  nms_iou_threshold: float = 0.5

  def _features(self, images: Array, train: bool) -> dict[int, Array]:
    feats = self.backbone(images, train=train)
    if self.fpn is not None:
      feats = self.fpn(feats)
    if not isinstance(feats, Mapping) or not feats:
      raise ValueError("FasterRCNN expects the backbone (and FPN) to return a non-empty "
                       f"dict level -> NHWC map; got {type(feats).__name__}.")
    return {int(k): v for k, v in feats.items()}

  def _anchors(self, feats: dict[int, Array], levels: list[int]) -> tuple[list[Array], int]:
    """Anchors per level ``[N_l, 4]`` and the number of anchors per location."""
    sizes = (self.rpn_anchor_sizes if self.rpn_anchor_sizes is not None
             else rpn.default_anchor_sizes(levels))
    counts = set(ops.num_anchors_per_location(sizes, self.rpn_aspect_ratios, len(levels)))
    if len(counts) != 1:
      raise ValueError("the RPN head shares its weights over levels, so every level needs the "
                       f"same number of anchors per location; got {sorted(counts)} from sizes "
                       f"{sizes!r} and ratios {self.rpn_aspect_ratios!r}.")
    shapes = [tuple(feats[lv].shape[1:3]) for lv in levels]
    return rpn.level_anchors(shapes, levels, sizes, self.rpn_aspect_ratios), counts.pop()

  @nn.compact
  def __call__(self, images: Array, targets: Mapping[str, Array] | None = None, *,
               train: bool) -> dict[str, Array]:
    """Detections (``targets=None``) or loss terms.

    Args:
      images: ``[B, S, S, 3]`` float32 canvases.
      targets: None, or ``{"boxes": [B, M, 4] float32 xyxy, "labels": [B, M] int32 in
        [0, num_classes) (-1 padding), "mask": [B, M] bool}``.
      train: training mode of the backbone (BatchNorm statistics).

    Returns:
      Without targets: ``{"boxes": [B, D, 4] float32 xyxy clipped to the canvas, "scores":
      [B, D] float32 decreasing, -1 padding, "classes": [B, D] int32, -1 padding,
      "num_valid": [B] int32}``. With targets: ``{"rpn_cls", "rpn_box", "box_cls",
      "box_box"}`` float32 scalars whose sum is the training loss (a sampling rng
      ``"sampling"`` is needed).
    """
    layers.check_image_batch(images, "FasterRCNN")
    image_size = tuple(images.shape[1:3])
    feats = self._features(images, train)
    levels = sorted(feats)
    anchors, num_anchors = self._anchors(feats, levels)
    objectness, deltas = rpn.RPNHead(num_anchors, self.rpn_conv_dim, name="rpn_head")(
        [feats[lv] for lv in levels])
    training = targets is not None
    proposals = rpn.propose(
        objectness, deltas, anchors, image_size,
        pre_nms_top_k=self.rpn_pre_nms_top_k_train if training else self.rpn_pre_nms_top_k_test,
        post_nms_top_k=(self.rpn_post_nms_top_k_train if training
                        else self.rpn_post_nms_top_k_test),
        nms_iou_threshold=self.rpn_nms_iou_threshold, min_size=self.rpn_min_size)
    box_head = roi_heads.BoxHead(
        self.num_classes, fc_dim=self.box_fc_dim, num_fc=self.box_num_fc,
        num_convs=self.box_num_convs, conv_dim=self.box_conv_dim,
        num_groups=self.box_num_groups, roi_size=self.box_roi_size,
        sampling_ratio=self.box_sampling_ratio, max_level=self.box_max_level, name="box_head")

    if not training:
      logits, box_deltas = box_head(feats, proposals.boxes, train=train)
      post = jax.vmap(lambda lg, d, r, v: roi_heads.postprocess(
          lg, d, r, v, image_size, score_threshold=self.score_threshold,
          nms_iou_threshold=self.nms_iou_threshold, max_detections=self.max_detections,
          pre_nms_top_k=self.box_pre_nms_top_k, min_size=self.box_min_size))
      det = post(logits, box_deltas, proposals.boxes, proposals.valid)
      return {"boxes": det.boxes, "scores": det.scores, "classes": det.classes,
              "num_valid": det.num_valid}

    gt_boxes, gt_labels, gt_mask = _check_targets(targets, images.shape[0])
    b = images.shape[0]
    rpn_rng, roi_rng = jax.random.split(self.make_rng("sampling"))
    all_anchors = jnp.concatenate(anchors)  # [N, 4]
    rpn_t = jax.vmap(lambda k, g, m: rpn.rpn_targets(
        k, all_anchors, g, m, fg_iou_threshold=self.rpn_fg_iou_threshold,
        bg_iou_threshold=self.rpn_bg_iou_threshold,
        batch_size_per_image=self.rpn_batch_size_per_image,
        positive_fraction=self.rpn_positive_fraction))(jax.random.split(rpn_rng, b), gt_boxes,
                                                        gt_mask)
    rpn_cls, rpn_box = rpn.rpn_losses(jnp.concatenate(objectness, axis=1),
                                      jnp.concatenate(deltas, axis=1), rpn_t,
                                      beta=self.rpn_box_loss_beta)
    samples = jax.vmap(lambda k, p, v, g, lab, m: roi_heads.sample_rois(
        k, p, v, g, lab, m, batch_size_per_image=self.box_batch_size_per_image,
        positive_fraction=self.box_positive_fraction,
        fg_iou_threshold=self.box_fg_iou_threshold, bg_iou_threshold=self.box_bg_iou_threshold,
        bg_iou_low_threshold=self.box_bg_iou_low_threshold))(
            jax.random.split(roi_rng, b), proposals.boxes, proposals.valid, gt_boxes, gt_labels,
            gt_mask)
    logits, box_deltas = box_head(feats, samples.rois, train=train)
    box_cls, box_box = roi_heads.box_losses(logits, box_deltas, samples,
                                            beta=self.box_loss_beta)
    return {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "box_cls": box_cls, "box_box": box_box}


def _check_targets(targets: Mapping[str, Array], batch: int) -> tuple[Array, Array, Array]:
  missing = {"boxes", "labels", "mask"} - set(targets)
  if missing:
    raise ValueError(f"targets must have keys 'boxes', 'labels' and 'mask'; missing "
                     f"{sorted(missing)}.")
  boxes = jnp.asarray(targets["boxes"], jnp.float32)
  labels = jnp.asarray(targets["labels"], jnp.int32)
  mask = jnp.asarray(targets["mask"], bool)
  if (boxes.ndim != 3 or boxes.shape[0] != batch or boxes.shape[-1] != 4
      or labels.shape != boxes.shape[:2] or mask.shape != boxes.shape[:2]):
    raise ValueError(f"targets must be boxes [B, M, 4], labels [B, M], mask [B, M] with B = "
                     f"{batch}; got {tuple(boxes.shape)}, {tuple(labels.shape)}, "
                     f"{tuple(mask.shape)}.")
  return boxes, labels, mask
