"""Box utilities: format conversion, area, pairwise IoU / GIoU, clipping, small-box masks.

Unless a name says otherwise boxes are ``xyxy`` in pixels: ``[x1, y1, x2, y2]`` with
``0 <= x1 <= x2 <= W`` and ``0 <= y1 <= y2 <= H`` for boxes inside an image. All functions take
any number of leading batch dimensions (``[..., 4]``), are pure ``jnp`` and work under ``jit``
and ``vmap``. Degenerate boxes (zero or negative width or height) have area 0 and never produce
NaN.
"""

from typing import Optional, Sequence, Tuple, Union

import jax.numpy as jnp

Array = jnp.ndarray
ImageSize = Union[Tuple[float, float], Sequence[float], Array]

# 'yxyx' is TFDS's normalized [ymin, xmin, ymax, xmax] in [0, 1] (tfds.features.BBoxFeature).
BOX_FORMATS = ("xyxy", "xywh", "cxcywh", "yxyx")


def _check_format(fmt: str, which: str) -> None:
  if fmt not in BOX_FORMATS:
    raise ValueError(
        f"Unknown box format {which}={fmt!r}; expected one of {', '.join(map(repr, BOX_FORMATS))}.")


def _check_boxes(boxes: Array, name: str = "boxes") -> Array:
  boxes = jnp.asarray(boxes)
  if boxes.ndim < 1 or boxes.shape[-1] != 4:
    raise ValueError(f"{name} must have shape [..., 4]; got shape {tuple(boxes.shape)}.")
  if not jnp.issubdtype(boxes.dtype, jnp.floating):
    boxes = boxes.astype(jnp.float32)
  return boxes


def _image_hw(image_size: Optional[ImageSize], what: str) -> Tuple[Array, Array]:
  """Splits ``image_size=(h, w)`` (numbers, or arrays of shape [..., 2]) into h and w."""
  if image_size is None:
    raise ValueError(f"{what} needs image_size=(height, width) in pixels; got image_size=None.")
  size = jnp.asarray(image_size, dtype=jnp.float32)
  if size.ndim < 1 or size.shape[-1] != 2:
    raise ValueError(
        f"image_size must be (height, width) or an array of shape [..., 2]; got shape "
        f"{tuple(size.shape)}.")
  return size[..., 0], size[..., 1]


def _to_xyxy(boxes: Array, fmt: str, image_size: Optional[ImageSize]) -> Array:
  a, b, c, d = jnp.moveaxis(boxes, -1, 0)
  if fmt == "xyxy":
    return boxes
  if fmt == "xywh":  # [x1, y1, w, h]
    return jnp.stack([a, b, a + c, b + d], axis=-1)
  if fmt == "cxcywh":  # [cx, cy, w, h]
    return jnp.stack([a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d], axis=-1)
  # yxyx: normalized [ymin, xmin, ymax, xmax].
  h, w = _image_hw(image_size, "box_convert from 'yxyx'")
  return jnp.stack([b * w, a * h, d * w, c * h], axis=-1)


def _from_xyxy(boxes: Array, fmt: str, image_size: Optional[ImageSize]) -> Array:
  x1, y1, x2, y2 = jnp.moveaxis(boxes, -1, 0)
  if fmt == "xyxy":
    return boxes
  if fmt == "xywh":
    return jnp.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)
  if fmt == "cxcywh":
    return jnp.stack([0.5 * (x1 + x2), 0.5 * (y1 + y2), x2 - x1, y2 - y1], axis=-1)
  h, w = _image_hw(image_size, "box_convert to 'yxyx'")
  return jnp.stack([y1 / h, x1 / w, y2 / h, x2 / w], axis=-1)


def box_convert(boxes: Array, in_fmt: str, out_fmt: str, *,
                image_size: Optional[ImageSize] = None) -> Array:
  """Converts boxes between formats.

  Formats:
    * ``'xyxy'``: ``[x1, y1, x2, y2]`` pixel corners (jaxvision's default).
    * ``'xywh'``: ``[x1, y1, w, h]`` top-left corner plus size (COCO annotations).
    * ``'cxcywh'``: ``[cx, cy, w, h]`` centre plus size (DETR).
    * ``'yxyx'``: TFDS ``BBoxFeature`` order ``[ymin, xmin, ymax, xmax]`` normalized to [0, 1] by
      the image height and width; converting from or to it needs ``image_size=(h, w)``.

  Args:
    boxes: ``[..., 4]`` boxes in ``in_fmt``.
    in_fmt: format of ``boxes``.
    out_fmt: format of the result.
    image_size: ``(height, width)`` in pixels, required iff one format is ``'yxyx'``; numbers or
      an array of shape ``[..., 2]`` whose leading dimensions broadcast against ``boxes[..., 0]``
      (e.g. ``[B, 1, 2]`` for boxes ``[B, N, 4]``).

  Returns:
    ``[..., 4]`` boxes in ``out_fmt`` (floating dtype).

  Raises:
    ValueError: unknown format names, a missing ``image_size`` for ``'yxyx'``, or boxes whose last
      dimension is not 4.
  """
  _check_format(in_fmt, "in_fmt")
  _check_format(out_fmt, "out_fmt")
  boxes = _check_boxes(boxes)
  if in_fmt == out_fmt:
    return boxes
  return _from_xyxy(_to_xyxy(boxes, in_fmt, image_size), out_fmt, image_size)


def box_area(boxes: Array) -> Array:
  """Area of ``[..., 4]`` xyxy boxes -> ``[...]``; negative widths/heights count as 0."""
  boxes = _check_boxes(boxes)
  w = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
  h = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
  return w * h


def _safe_div(num: Array, den: Array) -> Array:
  """num / den where den > 0, else 0, with gradients free of NaN."""
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _pair_mask(mask1: Optional[Array], mask2: Optional[Array], n: int, m: int,
               batch_shape) -> Optional[Array]:
  if mask1 is None and mask2 is None:
    return None
  m1 = jnp.ones(batch_shape + (n,), bool) if mask1 is None else jnp.asarray(mask1, bool)
  m2 = jnp.ones(batch_shape + (m,), bool) if mask2 is None else jnp.asarray(mask2, bool)
  if m1.shape[-1] != n or m2.shape[-1] != m:
    raise ValueError(
        f"masks must have shapes [..., {n}] and [..., {m}] (one flag per box); got "
        f"{tuple(m1.shape)} and {tuple(m2.shape)}.")
  return m1[..., :, None] & m2[..., None, :]  # [..., N, M]


def _iou_parts(boxes1: Array, boxes2: Array):
  """Returns (iou, union, enclosing corners) for [..., N, 4] x [..., M, 4] -> [..., N, M]."""
  b1 = boxes1[..., :, None, :]  # [..., N, 1, 4]
  b2 = boxes2[..., None, :, :]  # [..., 1, M, 4]
  area1 = box_area(boxes1)[..., :, None]  # [..., N, 1]
  area2 = box_area(boxes2)[..., None, :]  # [..., 1, M]
  lt = jnp.maximum(b1[..., :2], b2[..., :2])  # [..., N, M, 2]
  rb = jnp.minimum(b1[..., 2:], b2[..., 2:])  # [..., N, M, 2]
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]  # [..., N, M]
  union = area1 + area2 - inter  # [..., N, M]
  return _safe_div(inter, union), union, b1, b2


def box_iou(boxes1: Array, boxes2: Array, *, mask1: Optional[Array] = None,
            mask2: Optional[Array] = None) -> Array:
  """Pairwise intersection over union.

  Args:
    boxes1: ``[..., N, 4]`` xyxy boxes.
    boxes2: ``[..., M, 4]`` xyxy boxes (same leading batch dimensions).
    mask1: optional ``[..., N]`` bool, False for padded entries of ``boxes1``.
    mask2: optional ``[..., M]`` bool, False for padded entries of ``boxes2``.

  Returns:
    ``[..., N, M]`` IoU in [0, 1]. Pairs with zero union (two degenerate boxes) and pairs that
    involve a padded box are 0.
  """
  boxes1, boxes2 = _check_boxes(boxes1, "boxes1"), _check_boxes(boxes2, "boxes2")
  iou, _, _, _ = _iou_parts(boxes1, boxes2)
  valid = _pair_mask(mask1, mask2, boxes1.shape[-2], boxes2.shape[-2], boxes1.shape[:-2])
  return iou if valid is None else jnp.where(valid, iou, 0.0)


def generalized_box_iou(boxes1: Array, boxes2: Array, *, mask1: Optional[Array] = None,
                        mask2: Optional[Array] = None) -> Array:
  """Pairwise generalized IoU (Rezatofighi et al., 2019): ``IoU - (C - U) / C``.

  ``C`` is the area of the smallest box enclosing both and ``U`` the union area.

  Args:
    boxes1: ``[..., N, 4]`` xyxy boxes.
    boxes2: ``[..., M, 4]`` xyxy boxes.
    mask1: optional ``[..., N]`` bool, False for padded entries of ``boxes1``.
    mask2: optional ``[..., M]`` bool, False for padded entries of ``boxes2``.

  Returns:
    ``[..., N, M]`` GIoU in [-1, 1]. If the enclosing box has zero area (both boxes are the same
    point or line) the value is the IoU, 0. Pairs that involve a padded box are -1, the
    minimum, so they never win a max over candidates.
  """
  boxes1, boxes2 = _check_boxes(boxes1, "boxes1"), _check_boxes(boxes2, "boxes2")
  iou, union, b1, b2 = _iou_parts(boxes1, boxes2)
  lt = jnp.minimum(b1[..., :2], b2[..., :2])  # [..., N, M, 2]
  rb = jnp.maximum(b1[..., 2:], b2[..., 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  enclosing = wh[..., 0] * wh[..., 1]  # [..., N, M]
  giou = iou - _safe_div(enclosing - union, enclosing)
  giou = jnp.clip(giou, -1.0, 1.0)
  valid = _pair_mask(mask1, mask2, boxes1.shape[-2], boxes2.shape[-2], boxes1.shape[:-2])
  return giou if valid is None else jnp.where(valid, giou, -1.0)


def clip_boxes(boxes: Array, image_size: ImageSize) -> Array:
  """Clips ``[..., 4]`` xyxy boxes to ``[0, W] x [0, H]`` for ``image_size=(H, W)``.

  ``image_size`` may be a pair of numbers or a ``[..., 2]`` array (one size per image) whose
  leading dimensions broadcast against ``boxes[..., 0]`` (e.g. ``[B, 1, 2]`` for boxes
  ``[B, N, 4]``). Returns ``[..., 4]``.
  """
  boxes = _check_boxes(boxes)
  h, w = _image_hw(image_size, "clip_boxes")
  x1, y1, x2, y2 = jnp.moveaxis(boxes, -1, 0)
  clipped = [jnp.clip(x1, 0.0, w), jnp.clip(y1, 0.0, h), jnp.clip(x2, 0.0, w), jnp.clip(y2, 0.0, h)]
  return jnp.stack(clipped, axis=-1).astype(boxes.dtype)


def small_box_mask(boxes: Array, min_size: float) -> Array:
  """Marks small boxes: ``[..., 4]`` xyxy -> ``[...]`` bool.

  True unless both the width and the height are at least ``min_size`` (pixels), so a box with
  a NaN coordinate is small. Boxes to keep, as in torchvision's ``remove_small_boxes``
  (``(w >= min_size) & (h >= min_size)``), are ``~small_box_mask(boxes, min_size)``.
  """
  boxes = _check_boxes(boxes)
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  return ~((w >= min_size) & (h >= min_size))
