"""IoU matcher: assigns each anchor/proposal a ground-truth index or a sentinel.

Follows torchvision's / Detectron2's ``Matcher`` with static shapes: ground truth is padded to a
fixed ``M`` with a validity mask.
"""

from typing import Optional

import jax.numpy as jnp

from jaxvision.ops import boxes as box_ops

Array = jnp.ndarray

BELOW_LOW_THRESHOLD = -1  # best IoU < low_threshold: a negative (background) example.
BETWEEN_THRESHOLDS = -2  # low_threshold <= best IoU < high_threshold: ignored.


def match(quality: Array, *, high_threshold: float, low_threshold: float,
          allow_low_quality_matches: bool = False, gt_valid: Optional[Array] = None) -> Array:
  """Matches anchors to ground truth from a quality (IoU) matrix.

  Each anchor takes the ground truth it overlaps most (ties: lower gt index). If that IoU is
  ``>= high_threshold`` the anchor gets that gt index; if ``< low_threshold`` it gets
  ``BELOW_LOW_THRESHOLD``; otherwise ``BETWEEN_THRESHOLDS``.

  With ``allow_low_quality_matches``, for every valid gt the anchors whose IoU with it equals
  that gt's best IoU (all ties) are matched anyway, to their own best gt (as torchvision; so
  such an anchor may point to another gt it overlaps more). Unlike torchvision, a gt whose best
  IoU is 0 (it overlaps no anchor) creates no low-quality matches: otherwise every
  non-overlapping anchor would become a positive.

  Args:
    quality: ``[M, N]`` IoU of gt ``m`` with anchor ``n`` (torchvision's layout, e.g.
      ``box_iou(gt_boxes, anchors)``).
    high_threshold: foreground IoU threshold (``>=``).
    low_threshold: background IoU threshold (``<``); must be ``<= high_threshold``.
    allow_low_quality_matches: see above.
    gt_valid: optional ``[M]`` bool, False for padded ground truth (never matched).

  Returns:
    ``[N]`` int32: matched gt index in ``[0, M)``, or ``BELOW_LOW_THRESHOLD`` /
    ``BETWEEN_THRESHOLDS``. Anchors get ``BELOW_LOW_THRESHOLD`` if there is no valid gt.
  """
  if low_threshold > high_threshold:
    raise ValueError(f"low_threshold must be <= high_threshold; got {low_threshold} > "
                     f"{high_threshold}.")
  quality = jnp.asarray(quality)
  if quality.ndim != 2:
    raise ValueError(f"quality must be an [M_gt, N_anchors] matrix; got {tuple(quality.shape)}.")
  m = quality.shape[0]
  if gt_valid is None:
    gt_valid = jnp.ones((m,), bool)
  gt_valid = jnp.asarray(gt_valid, bool)
  if gt_valid.shape != (m,):
    raise ValueError(f"gt_valid must have shape [{m}]; got {tuple(gt_valid.shape)}.")
  # Padded rows get -1, below any threshold; with no valid gt every anchor ends below low.
  quality = jnp.where(gt_valid[:, None], quality, -1.0)  # [M, N]
  if m == 0:
    return jnp.full((quality.shape[1],), BELOW_LOW_THRESHOLD, jnp.int32)
  best = quality.max(axis=0)  # [N]
  # The first gt reaching the maximum (argmax's tie rule), as a max and a min: XLA:CPU's
  # argmax reduction over the short axis is several times slower.
  rows = jnp.arange(m, dtype=jnp.int32)[:, None]
  best_gt = jnp.min(jnp.where(quality == best, rows, m - 1), axis=0).astype(jnp.int32)  # [N]
  matches = jnp.where(best >= high_threshold, best_gt,
                      jnp.where(best < low_threshold, BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS))
  if allow_low_quality_matches:
    best_per_gt = quality.max(axis=1, keepdims=True)  # [M, 1]
    is_best = (quality == best_per_gt) & gt_valid[:, None] & (best_per_gt > 0)  # [M, N]
    matches = jnp.where(is_best.any(axis=0), best_gt, matches)
  return matches.astype(jnp.int32)


def match_boxes(anchors: Array, gt_boxes: Array, *, high_threshold: float,
                low_threshold: float, allow_low_quality_matches: bool = False,
                gt_valid: Optional[Array] = None) -> Array:
  """:func:`match` on ``box_iou(gt_boxes [M, 4], anchors [N, 4])`` (xyxy) -> ``[N]`` int32."""
  quality = box_ops.box_iou(gt_boxes, anchors)  # [M, N]
  return match(quality, high_threshold=high_threshold, low_threshold=low_threshold,
               allow_low_quality_matches=allow_low_quality_matches, gt_valid=gt_valid)
