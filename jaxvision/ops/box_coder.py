"""Faster R-CNN box parameterization (Girshick et al.; torchvision ``BoxCoder``).

For a reference box ``(x, y, w, h)`` (centre and size) and a proposal/anchor ``(xa, ya, wa, ha)``:

  dx = wx * (x - xa) / wa      dy = wy * (y - ya) / ha
  dw = ww * log(w / wa)        dh = wh * log(h / ha)

with ``weights = (wx, wy, ww, wh)``, e.g. ``(1, 1, 1, 1)`` for the RPN and ``(10, 10, 5, 5)`` for
the box head. Boxes are ``xyxy`` pixels with width ``x2 - x1`` (no +1, as torchvision).
Shapes are ``[..., 4]`` with any leading dimensions.
"""

import math
from typing import Sequence

import jax.numpy as jnp

Array = jnp.ndarray

# Largest dw/dh applied on decode: a box may grow at most 1000/16 times (torchvision).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)
# Widths/heights below this are raised to it on encode, so degenerate (padded) boxes give finite
# targets instead of inf/NaN. Far below any real pixel size.
MIN_ENCODE_SIZE = 1e-6


def _centre_size(boxes: Array):
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def _check(weights: Sequence[float], *arrays: Array):
  if len(weights) != 4:
    raise ValueError(f"weights must be (wx, wy, ww, wh); got {tuple(weights)!r}.")
  for a in arrays:
    if a.shape[-1:] != (4,):
      raise ValueError(f"boxes and deltas must have shape [..., 4]; got {tuple(a.shape)}.")


def encode(reference_boxes: Array, proposals: Array,
           weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> Array:
  """Regression targets that map ``proposals`` onto ``reference_boxes``.

  Args:
    reference_boxes: ``[..., 4]`` xyxy target (ground-truth) boxes.
    proposals: ``[..., 4]`` xyxy anchors/proposals (broadcastable against the targets).
    weights: ``(wx, wy, ww, wh)``.

  Returns:
    ``[..., 4]`` deltas ``(dx, dy, dw, dh)``. Sizes below ``MIN_ENCODE_SIZE`` are raised to it,
    so degenerate boxes give finite values.
  """
  reference_boxes, proposals = jnp.asarray(reference_boxes), jnp.asarray(proposals)
  _check(weights, reference_boxes, proposals)
  wx, wy, ww, wh = weights
  ex_x, ex_y, ex_w, ex_h = _centre_size(proposals)
  gt_x, gt_y, gt_w, gt_h = _centre_size(reference_boxes)
  ex_w, ex_h = jnp.maximum(ex_w, MIN_ENCODE_SIZE), jnp.maximum(ex_h, MIN_ENCODE_SIZE)
  gt_w, gt_h = jnp.maximum(gt_w, MIN_ENCODE_SIZE), jnp.maximum(gt_h, MIN_ENCODE_SIZE)
  return jnp.stack([wx * (gt_x - ex_x) / ex_w, wy * (gt_y - ex_y) / ex_h,
                    ww * jnp.log(gt_w / ex_w), wh * jnp.log(gt_h / ex_h)], axis=-1)


def decode(deltas: Array, boxes: Array,
           weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> Array:
  """Applies ``deltas`` to ``boxes`` (inverse of :func:`encode`).

  Args:
    deltas: ``[..., 4]`` ``(dx, dy, dw, dh)``.
    boxes: ``[..., 4]`` xyxy anchors/proposals (broadcastable against ``deltas``).
    weights: ``(wx, wy, ww, wh)`` used for encoding.

  Returns:
    ``[..., 4]`` xyxy boxes. ``dw / ww`` and ``dh / wh`` are clipped above at
    ``BBOX_XFORM_CLIP`` so huge deltas give large but finite boxes.
  """
  deltas, boxes = jnp.asarray(deltas), jnp.asarray(boxes)
  _check(weights, deltas, boxes)
  wx, wy, ww, wh = weights
  ctr_x, ctr_y, w, h = _centre_size(boxes)
  dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
  dw = jnp.minimum(deltas[..., 2] / ww, BBOX_XFORM_CLIP)
  dh = jnp.minimum(deltas[..., 3] / wh, BBOX_XFORM_CLIP)
  pred_x, pred_y = dx * w + ctr_x, dy * h + ctr_y
  half_w, half_h = 0.5 * jnp.exp(dw) * w, 0.5 * jnp.exp(dh) * h
  return jnp.stack([pred_x - half_w, pred_y - half_h, pred_x + half_w, pred_y + half_h], axis=-1)
