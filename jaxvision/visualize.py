"""Drawing detections on images (host side, NumPy + Pillow).

:func:`draw_bounding_boxes` is the counterpart of torchvision's ``utils.draw_bounding_boxes``
for channels-last uint8 images and ``xyxy`` pixel boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct, colour-blind-friendly colours (Okabe & Ito), cycled by class id.
PALETTE = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
           (213, 94, 0), (204, 121, 167), (255, 255, 255))


def draw_bounding_boxes(image, boxes, *, labels: Sequence[str] | None = None,
                        class_ids=None, colors=None, width: int = 2) -> np.ndarray:
  """Returns a copy of ``image`` with ``boxes`` drawn and, optionally, labelled.

  Args:
    image: uint8 ``[H, W, 3]`` (or ``[H, W]`` / ``[H, W, 1]``, drawn as RGB).
    boxes: ``[N, 4]`` ``xyxy`` pixels of ``image`` (``x2``/``y2`` are box edges); boxes may
      extend past the image (they are clipped by the drawing).
    labels: optional ``N`` strings written at each box's top-left corner (e.g.
      ``"WBC 0.97"``).
    class_ids: optional ``[N]`` ints choosing each box's colour from :data:`PALETTE`
      (default: all the first colour).
    colors: optional ``N`` RGB tuples, overriding ``class_ids``.
    width: line width in pixels.

  Returns:
    uint8 ``[H, W, 3]``.

  Raises:
    ValueError: a non-uint8 image, boxes not ``[N, 4]``, or labels/colours of another length.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim not in (2, 3):
    raise ValueError(f"draw_bounding_boxes expects a uint8 [H, W, 3] image; found "
                     f"{image.dtype} {image.shape}")
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
  n = len(boxes)
  for name, values in (("labels", labels), ("class_ids", class_ids), ("colors", colors)):
    if values is not None and len(values) != n:
      raise ValueError(f"{name} must have one entry per box ({n}); found {len(values)}")
  if colors is None:
    ids = np.zeros(n, int) if class_ids is None else np.asarray(class_ids, int)
    colors = [PALETTE[i % len(PALETTE)] for i in ids]
  canvas = Image.fromarray(image[..., :3])
  draw = ImageDraw.Draw(canvas)
  font = ImageFont.load_default()
  for i, (x1, y1, x2, y2) in enumerate(boxes):
    if not np.all(np.isfinite([x1, y1, x2, y2])):
      continue
    color = tuple(int(c) for c in colors[i])
    draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=color, width=width)
    if labels is not None and labels[i]:
      left, top, right, bottom = draw.textbbox((x1, y1), labels[i], font=font)
      ty = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
      draw.rectangle([x1, ty, x1 + (right - left) + 2, ty + (bottom - top) + 2], fill=color)
      draw.text((x1 + 1, ty), labels[i], fill=(0, 0, 0), font=font)
  return np.asarray(canvas)
