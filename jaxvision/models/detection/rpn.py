"""Region proposal network (Ren et al., 2015) with static shapes.

The head is torchvision's ``RPNHead`` (a shared 3x3 conv, then 1x1 convs for objectness and box
deltas, the same weights on every level); the proposal stage follows tensorflow/tpu
``models/official/detection`` (``ops/roi_ops.py``): every stage keeps a fixed size, so the whole
network compiles once.

Conventions (as :mod:`jaxvision.ops`): boxes are ``xyxy`` canvas pixels; levels are integers
``l`` whose feature maps have stride ``2**l``; anchors of all levels are concatenated level
by level, each level in ``(y, x, anchor)`` order, which is the order of a head output
``[B, H, W, A * k]`` reshaped to ``[B, H * W * A, k]``.

Pieces:

* :class:`RPNHead`: per level ``[B, H, W, C] -> objectness [B, H*W*A], deltas [B, H*W*A, 4]``.
* :func:`default_anchor_sizes`, :func:`level_anchors`: anchors per level.
* :func:`rpn_targets`: one image's matching (IoU 0.7 / 0.3 with low-quality matches), balanced
  sampling (256 anchors, at most half positive) and encoded deltas.
* :func:`rpn_losses`: objectness BCE and smooth-L1 box loss over the sampled anchors.
* :func:`propose`: per-level top-k, decode, clip, small-box removal, NMS, top-k to ``K``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxvision import losses
from jaxvision import ops
from jaxvision.models import layers

Array = jax.Array

RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


class RPNHead(nn.Module):
  """Shared RPN head: 3x3 conv + ReLU, then 1x1 convs to objectness logits and box deltas.

  One set of weights serves every level (as torchvision's ``RPNHead``); all levels must have
  the same number of channels. Weights are initialised from N(0, 0.01), biases at 0.

  Attributes:
    num_anchors: ``A``, anchors per location (the same on every level).
    conv_dim: channels of the shared 3x3 conv; None: the input's channels.
  """
  num_anchors: int
  conv_dim: int | None = None

  @nn.compact
  def __call__(self, features: Sequence[Array]) -> tuple[list[Array], list[Array]]:
    """Applies the head to each level.

    Args:
      features: ``L`` NHWC maps ``[B, H_l, W_l, C]``.

    Returns:
      ``(objectness, deltas)``: lists of ``L`` arrays, ``[B, H_l * W_l * A]`` float logits and
      ``[B, H_l * W_l * A, 4]`` deltas ``(dx, dy, dw, dh)`` relative to the anchors.
    """
    features = list(features)
    if not features:
      raise ValueError("RPNHead needs at least one feature level; got none.")
    channels = {f.shape[-1] for f in features}
    if len(channels) != 1 or any(f.ndim != 4 for f in features):
      raise ValueError("RPNHead shares its weights over levels, so every level must be NHWC with "
                       f"the same channels; got shapes {[tuple(f.shape) for f in features]}.")
    init = nn.initializers.normal(0.01)
    a = self.num_anchors
    conv = layers.Conv(self.conv_dim or channels.pop(), (3, 3), padding="SAME",
                       kernel_init=init, name="conv")
    cls = layers.Conv(a, (1, 1), kernel_init=init, name="cls_logits")
    box = layers.Conv(a * 4, (1, 1), kernel_init=init, name="bbox_pred")
    objectness, deltas = [], []
    for x in features:
      t = nn.relu(conv(x))
      b, h, w, _ = t.shape
      objectness.append(cls(t).reshape(b, h * w * a))
      deltas.append(box(t).reshape(b, h * w * a, 4))
    return objectness, deltas


def default_anchor_sizes(levels: Sequence[int]) -> tuple[tuple[float, ...], ...]:
  """Anchor sizes per level when none are given.

  Several levels: one size ``2**(l + 3)`` per level ``l`` (torchvision's 32, 64, 128, 256, 512
  on P2..P6). A single level ``l``: five sizes ``2**(l + 1) .. 2**(l + 5)`` (32..512 on a
  stride-16 map, torchvision's single-map example).
  """
  levels = list(levels)
  if len(levels) == 1:
    return (tuple(float(2 ** (levels[0] + i)) for i in range(1, 6)),)
  return tuple((float(2 ** (lv + 3)),) for lv in levels)


def level_anchors(feature_shapes: Sequence[tuple[int, int]], levels: Sequence[int], sizes,
                  aspect_ratios) -> list[Array]:
  """Grid anchors of each level, as a list of ``[H_l * W_l * A_l, 4]`` float32 xyxy arrays.

  Args:
    feature_shapes: ``(H_l, W_l)`` of each level.
    levels: the level numbers ``l`` (stride ``2**l``), same order.
    sizes, aspect_ratios: as :func:`jaxvision.ops.generate_anchors`.
  """
  if len(feature_shapes) != len(levels):
    raise ValueError(f"need one level number per feature map; got {len(levels)} levels for "
                     f"{len(feature_shapes)} maps.")
  strides = [2 ** lv for lv in levels]
  anchors = ops.generate_anchors(list(feature_shapes), strides, sizes, aspect_ratios)
  counts = ops.num_anchors_per_location(sizes, aspect_ratios, len(levels))
  ends = np.cumsum([h * w * a for (h, w), a in zip(feature_shapes, counts)]).tolist()
  return [anchors[start:end] for start, end in zip([0] + ends[:-1], ends)]


class RPNTargets(NamedTuple):
  """One image's RPN targets (leading ``[B]`` when vmapped).

  Attributes:
    matches: ``[N]`` int32 matched gt index, or ``ops.BELOW_LOW_THRESHOLD`` (-1) /
      ``ops.BETWEEN_THRESHOLDS`` (-2).
    positive: ``[N]`` bool, the sampled positive anchors.
    negative: ``[N]`` bool, the sampled negative anchors.
    box_targets: ``[N, 4]`` float32 deltas encoding each anchor's matched gt (weights 1); 0
      where ``matches < 0``.
    num_positive: int32 scalar, sampled positives.
    num_sampled: int32 scalar, sampled positives plus negatives.
  """
  matches: Array
  positive: Array
  negative: Array
  box_targets: Array
  num_positive: Array
  num_sampled: Array


def rpn_targets(rng: Array, anchors: Array, gt_boxes: Array, gt_mask: Array, *,
                fg_iou_threshold: float = 0.7, bg_iou_threshold: float = 0.3,
                batch_size_per_image: int = 256, positive_fraction: float = 0.5) -> RPNTargets:
  """Matches and samples the anchors of one image (``jax.vmap`` it for a batch).

  Each anchor takes the gt it overlaps most: IoU ``>= fg_iou_threshold`` is a positive, IoU
  ``< bg_iou_threshold`` a negative, in between ignored; the anchors with a gt's highest IoU
  are positives too (low-quality matches, see :func:`jaxvision.ops.match`). Then
  ``batch_size_per_image`` anchors are drawn, at most ``positive_fraction`` of them positive
  (:func:`jaxvision.ops.sample_balanced`).

  Args:
    rng: PRNG key for the sampler.
    anchors: ``[N, 4]`` xyxy anchors.
    gt_boxes: ``[M, 4]`` xyxy ground truth, padded.
    gt_mask: ``[M]`` bool, True for real boxes (an image may have none: all anchors negative).
    fg_iou_threshold, bg_iou_threshold: matching thresholds.
    batch_size_per_image, positive_fraction: sampler settings.

  Returns:
    :class:`RPNTargets`.
  """
  anchors = jnp.asarray(anchors, jnp.float32)
  gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
  if anchors.ndim != 2 or gt_boxes.ndim != 2 or gt_mask.shape != gt_boxes.shape[:1]:
    raise ValueError(
        "rpn_targets takes one image: anchors [N, 4], gt_boxes [M, 4], gt_mask [M] (vmap for a "
        f"batch); got {tuple(anchors.shape)}, {tuple(gt_boxes.shape)}, {tuple(gt_mask.shape)}.")
  matches = ops.match_boxes(anchors, gt_boxes, high_threshold=fg_iou_threshold,
                            low_threshold=bg_iou_threshold, allow_low_quality_matches=True,
                            gt_valid=gt_mask)  # [N]
  samples = ops.sample_balanced(rng, matches >= 0, matches == ops.BELOW_LOW_THRESHOLD,
                                num_samples=batch_size_per_image,
                                positive_fraction=positive_fraction)
  matched = gt_boxes[jnp.maximum(matches, 0)]  # [N, 4]
  box_targets = ops.encode_boxes(matched, anchors, RPN_BOX_WEIGHTS)
  box_targets = jnp.where((matches >= 0)[:, None], box_targets, 0.0)
  return RPNTargets(matches, samples.positive, samples.negative, box_targets,
                    samples.num_positive, samples.num_sampled)


def rpn_losses(objectness: Array, deltas: Array, targets: RPNTargets, *,
               beta: float = 1.0 / 9.0) -> tuple[Array, Array]:
  """RPN losses over the sampled anchors of a batch (torchvision's normalisation).

  Args:
    objectness: ``[B, N]`` logits (all levels concatenated).
    deltas: ``[B, N, 4]`` predicted deltas.
    targets: batched :class:`RPNTargets` (``[B, N]`` fields).
    beta: smooth-L1 beta.

  Returns:
    ``(cls_loss, box_loss)`` float32 scalars: binary cross-entropy summed over sampled anchors
    and smooth-L1 summed over sampled positives (and the 4 coordinates), both divided by
    ``max(1, number of sampled anchors in the batch)``.
  """
  sampled = targets.positive | targets.negative  # [B, N]
  norm = jnp.maximum(sampled.sum(), 1).astype(jnp.float32)
  bce = optax.sigmoid_binary_cross_entropy(objectness.astype(jnp.float32),
                                           targets.positive.astype(jnp.float32))  # [B, N]
  cls_loss = jnp.where(sampled, bce, 0.0).sum() / norm
  l1 = losses.smooth_l1_loss(deltas, targets.box_targets, beta=beta).sum(-1)  # [B, N]
  box_loss = jnp.where(targets.positive, l1, 0.0).sum() / norm
  return cls_loss, box_loss


class Proposals(NamedTuple):
  """Proposals of a batch.

  Attributes:
    boxes: ``[B, K, 4]`` float32 xyxy, inside ``[0, W] x [0, H]``, by decreasing score; 0 in
      padding.
    scores: ``[B, K]`` float32 objectness probabilities, -1 in padding.
    valid: ``[B, K]`` bool, True for real proposals (a prefix).
  """
  boxes: Array
  scores: Array
  valid: Array


def propose(objectness: Sequence[Array], deltas: Sequence[Array], anchors: Sequence[Array],
            image_size: tuple[int, int], *, pre_nms_top_k: int, post_nms_top_k: int,
            nms_iou_threshold: float = 0.7, min_size: float = 1e-3) -> Proposals:
  """Turns RPN outputs into ``K = post_nms_top_k`` proposals per image, every shape static.

  Per level: the ``min(pre_nms_top_k, N_l)`` highest objectness logits, their anchors decoded
  and clipped to the canvas, boxes narrower or shorter than ``min_size`` dropped. Then greedy
  NMS at ``nms_iou_threshold`` within each level, and the ``K`` best kept boxes over all
  levels. The NMS is one class-aware :func:`jaxvision.ops.batched_nms` with the level as the
  class: it keeps exactly what per-level NMS to ``K`` boxes each followed by a global top-k
  keeps (tensorflow/tpu's ``multilevel_propose_rois``), in one loop of at most ``K`` steps.
  Gradients do not flow into the proposals (``stop_gradient``).

  Args:
    objectness: ``L`` arrays ``[B, N_l]`` of logits.
    deltas: ``L`` arrays ``[B, N_l, 4]``.
    anchors: ``L`` arrays ``[N_l, 4]`` xyxy.
    image_size: ``(H, W)`` canvas size in pixels (static).
    pre_nms_top_k: candidates per level.
    post_nms_top_k: ``K``.
    nms_iou_threshold: NMS IoU threshold.
    min_size: minimum box width and height in pixels.

  Returns:
    :class:`Proposals`.
  """
  if not (len(objectness) == len(deltas) == len(anchors)) or not objectness:
    raise ValueError(f"need objectness, deltas and anchors for the same levels; got "
                     f"{len(objectness)}, {len(deltas)} and {len(anchors)} levels.")
  all_boxes, all_logits, all_levels = [], [], []
  for i, (logits, delta, anchor) in enumerate(zip(objectness, deltas, anchors)):
    anchor = jnp.asarray(anchor, jnp.float32)
    n = anchor.shape[0]
    if logits.shape[1:] != (n,) or delta.shape[1:] != (n, 4):
      raise ValueError(f"level {i}: expected objectness [B, {n}] and deltas [B, {n}, 4] for "
                       f"{n} anchors; got {tuple(logits.shape)} and {tuple(delta.shape)}.")
    logits = lax.stop_gradient(logits.astype(jnp.float32))
    delta = lax.stop_gradient(delta.astype(jnp.float32))
    k = min(pre_nms_top_k, n)
    top_logits, idx = lax.top_k(logits, k)  # [B, k]
    top_deltas = jnp.take_along_axis(delta, idx[..., None], axis=1)
    boxes = ops.decode_boxes(top_deltas, anchor[idx], RPN_BOX_WEIGHTS)  # [B, k, 4]
    all_boxes.append(ops.clip_boxes(boxes, image_size))
    all_logits.append(top_logits)
    all_levels.append(jnp.full((k,), i, jnp.int32))
  boxes = jnp.concatenate(all_boxes, axis=1)  # [B, N', 4]
  logits = jnp.concatenate(all_logits, axis=1)  # [B, N']
  level = jnp.concatenate(all_levels)  # [N']
  candidates = ~ops.small_box_mask(boxes, min_size) & jnp.isfinite(logits)  # [B, N']

  def one_image(b, s, c):
    return ops.batched_nms(b, s, level, iou_threshold=nms_iou_threshold,
                           max_output=post_nms_top_k, valid_mask=c)

  keep, _ = jax.vmap(one_image)(boxes, logits, candidates)  # [B, K]
  valid = keep >= 0
  safe = jnp.maximum(keep, 0)
  out_boxes = jnp.take_along_axis(boxes, safe[..., None], axis=1)
  out_scores = jax.nn.sigmoid(jnp.take_along_axis(logits, safe, axis=1))
  return Proposals(jnp.where(valid[..., None], out_boxes, 0.0),
                   jnp.where(valid, out_scores, -1.0), valid)
