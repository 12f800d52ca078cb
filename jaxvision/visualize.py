"""Drawing on images (host side): detections (NumPy + Pillow) and tagged images
(matplotlib).

:func:`draw_bounding_boxes` is the counterpart of torchvision's ``utils.draw_bounding_boxes``
for channels-last uint8 images and ``xyxy`` pixel boxes. :func:`plot_tagged_images` writes a
PNG of images, each captioned (e.g. with its tags and their probabilities).
"""

from __future__ import annotations

import os
import pathlib
import textwrap
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


def plot_tagged_images(images: Sequence[np.ndarray], captions: Sequence[str],
                       path: str | os.PathLike, *, ncols: int | None = None,
                       title: str | None = None, panel_inches: float = 2.4) -> pathlib.Path:
  """Writes a PNG of ``images``, each above its caption (e.g. ``"tabby 0.62\\ntiger cat
  0.21"``), in rows of ``ncols`` panels.

  Args:
    images: uint8 ``[H, W, 3]``, ``[H, W, 1]`` or ``[H, W]`` arrays (sizes may differ; each is
      shown whole, aspect kept, small ones enlarged without smoothing).
    captions: one string per image (lines separated by ``\\n``; long lines are wrapped).
    path: the PNG file (parent folders are created).
    ncols: panels per row (default: up to 4).
    title: optional title above the panels.
    panel_inches: the width and image height of a panel, in inches (100 dpi).

  Returns:
    ``path``.

  Raises:
    ValueError: no images, captions of another length, or an image that is not uint8 2-D/3-D.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global state
  from matplotlib.figure import Figure

  if not len(images) or len(images) != len(captions):
    raise ValueError(f"expected one caption per image and at least one image; found "
                     f"{len(images)} images and {len(captions)} captions")
  shown = []
  for image in images:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
      raise ValueError(f"expected uint8 [H, W] or [H, W, C] images; found {image.dtype} "
                       f"{image.shape}")
    shown.append(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
  n = len(shown)
  ncols = max(1, min(ncols or 4, n))
  rows = -(-n // ncols)
  width = max(12, int(panel_inches * 16))  # characters of 8-point text across a panel
  captions = ["\n".join(textwrap.fill(line, width) for line in str(c).split("\n"))
              for c in captions]
  lines = max(c.count("\n") + 1 for c in captions)
  caption_inches = 0.17 * lines + 0.1
  title_inches = 0.35 if title else 0.0
  fig = Figure(figsize=(ncols * panel_inches, rows * (panel_inches + caption_inches)
                        + title_inches), dpi=100)
  FigureCanvasAgg(fig)
  height = fig.get_figheight()
  for i, (image, caption) in enumerate(zip(shown, captions)):
    r, c = divmod(i, ncols)
    top = title_inches + r * (panel_inches + caption_inches)
    ax = fig.add_axes([(c * panel_inches + 0.05) / fig.get_figwidth(),
                       1 - (top + panel_inches - 0.05) / height,
                       (panel_inches - 0.1) / fig.get_figwidth(),
                       (panel_inches - 0.1) / height])
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255,
              interpolation="nearest")
    ax.set_axis_off()
    fig.text((c + 0.5) * panel_inches / fig.get_figwidth(),
             1 - (top + panel_inches) / height, str(caption), ha="center", va="top",
             fontsize=8, linespacing=1.1)
  if title:
    fig.suptitle(title, fontsize=9, y=1 - 0.08 / height, va="top")
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  return path
