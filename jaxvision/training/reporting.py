"""Run outputs: ``metrics.jsonl``, TensorBoard event files and plots.

Only process 0 writes. ``metrics.jsonl`` has one JSON object per line:
``{"step": int, "kind": "train"|"eval", ...scalars}``; TensorBoard receives the same scalars
under ``train/<name>`` and ``eval/<name>``.
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any, Mapping

import jax
import numpy as np


class MetricWriter:
  """Appends scalar metrics to ``<workdir>/metrics.jsonl`` and TensorBoard event files."""

  def __init__(self, workdir):
    self.workdir = pathlib.Path(workdir)
    self._enabled = jax.process_index() == 0
    self._tb = None
    if self._enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)
      import tensorflow as tf  # TensorBoard's writer
      self._tb = tf.summary.create_file_writer(str(self.workdir / "tensorboard"))

  def write(self, step: int, kind: str, scalars: Mapping[str, Any]):
    """Writes one record; values must be Python or NumPy scalars."""
    if not self._enabled:
      return
    record = {"step": int(step), "kind": kind}
    record.update({k: _to_python(v) for k, v in scalars.items()})
    with open(self.workdir / "metrics.jsonl", "a") as f:
      f.write(json.dumps(record) + "\n")
    import tensorflow as tf
    with self._tb.as_default():
      for k, v in record.items():
        if k not in ("step", "kind") and isinstance(v, (int, float)):
          tf.summary.scalar(f"{kind}/{k}", v, step=int(step))
    self._tb.flush()

  def write_images(self, step: int, tag: str, images) -> None:
    """Writes uint8 ``[N, H, W, 3]`` images to TensorBoard under ``tag``."""
    if not self._enabled:
      return
    import tensorflow as tf
    with self._tb.as_default():
      tf.summary.image(tag, np.asarray(images, np.uint8), step=int(step),
                       max_outputs=len(images))
    self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_metrics(path) -> list[dict]:
  """Reads a ``metrics.jsonl`` file into a list of records."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  records = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:  # e.g. a line cut short when a disk filled up
      logging.warning("%s line %d is not JSON (a write cut short?); skipped", path, number)
  return records


def _to_python(v):
  if isinstance(v, (np.generic, np.ndarray)) and np.ndim(v) == 0:
    return v.item()
  return v


def plot_curves(records: list[dict], path, *, metrics=("loss", "accuracy")):
  """Plots train and eval curves of ``metrics`` over steps into a PNG at ``path``."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6))
  axes = np.atleast_1d(axes)
  for ax, name in zip(axes, metrics):
    for kind, style in (("train", "-"), ("eval", "o-")):
      pts = [(r["step"], r[name]) for r in records if r.get("kind") == kind and name in r]
      if pts:
        steps, values = zip(*pts)
        ax.plot(steps, values, style, label=kind, markersize=4)
    ax.set_xlabel("step")
    ax.set_title(name)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_confusion_matrix(cm, class_names, path, *, title="confusion matrix"):
  """Draws a confusion matrix (rows true, columns predicted) with counts into a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cm = np.asarray(cm)
  k = cm.shape[0]
  size = max(4.0, 0.45 * k + 2)
  fig, ax = plt.subplots(figsize=(size, size))
  ax.imshow(cm, cmap="Blues")
  ax.set_xticks(range(k), class_names, rotation=45 if k > 10 else 0, ha="right")
  ax.set_yticks(range(k), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title)
  threshold = cm.max() / 2 if cm.size else 0
  if k <= 20:
    for i in range(k):
      for j in range(k):
        ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                color="white" if cm[i, j] > threshold else "black")
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def to_uint8(images, value_range=(-1.0, 1.0)) -> np.ndarray:
  """Maps float images in ``value_range`` to uint8 ``[0, 255]`` (rounded, clipped).

  ``round((x - lo) / (hi - lo) * 255)``: the values a PNG of the images stores.
  """
  lo, hi = value_range
  if hi <= lo:
    raise ValueError(f"value_range must be (lo, hi) with lo < hi; found {value_range}")
  scaled = (np.asarray(images, np.float32) - lo) * (255.0 / (hi - lo))
  return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def image_grid(images, ncols: int, *, padding: int = 2, pad_value: int = 255) -> np.ndarray:
  """Tiles uint8 images ``[N, H, W, C]`` row-major into ``[R*(H+p)+p, K*(W+p)+p, C]``.

  ``R = ceil(N / ncols)`` rows of ``K = ncols`` images, ``padding`` pixels of ``pad_value``
  around each; unused cells of the last row stay ``pad_value``.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[0] < 1 or images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 [N, H, W, C] with N >= 1; found {images.dtype} "
                     f"{images.shape}")
  if ncols < 1:
    raise ValueError(f"ncols must be >= 1; found {ncols}")
  n, h, w, c = images.shape
  rows = -(-n // ncols)
  grid = np.full((rows * (h + padding) + padding, ncols * (w + padding) + padding, c),
                 pad_value, np.uint8)
  for i, image in enumerate(images):
    r, k = divmod(i, ncols)
    top, left = padding + r * (h + padding), padding + k * (w + padding)
    grid[top:top + h, left:left + w] = image
  return grid


def plot_image_grid(images, path, *, ncols: int, row_labels=None, title: str | None = None,
                    value_range=(-1.0, 1.0), pixel_scale: int | None = None):
  """Saves ``images [N, H, W, C]`` (float in ``value_range`` or uint8) as a PNG grid.

  Args:
    images: the images, row-major in the grid.
    path: PNG file to write (parent folders are created).
    ncols: images per row.
    row_labels: optional text per grid row (e.g. class names), drawn at the left.
    title: optional title above the grid.
    value_range: range of float images (ignored for uint8).
    pixel_scale: screen pixels per image pixel (nearest-neighbour, no smoothing); default
      ``max(1, 84 // H)`` (3 for 28x28 images).
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  images = np.asarray(images)
  if images.dtype != np.uint8:
    images = to_uint8(images, value_range)
  padding = 2
  grid = image_grid(images, ncols, padding=padding)
  rows = -(-images.shape[0] // ncols)
  pixel_scale = pixel_scale or max(1, 84 // images.shape[1])
  if row_labels is not None and len(row_labels) != rows:
    raise ValueError(f"row_labels has {len(row_labels)} entries for {rows} grid rows")
  dpi = 100
  margin_left = 0.1
  if row_labels is not None:  # about 0.07 inch per character at font size 8
    margin_left = max(0.5, 0.15 + 0.07 * max(len(str(label)) for label in row_labels))
  margin_top = 0.35 if title else 0.1
  width = grid.shape[1] * pixel_scale / dpi
  height = grid.shape[0] * pixel_scale / dpi
  fig = plt.figure(figsize=(width + margin_left + 0.1, height + margin_top + 0.1), dpi=dpi)
  ax = fig.add_axes([margin_left / fig.get_figwidth(), 0.1 / fig.get_figheight(),
                     width / fig.get_figwidth(), height / fig.get_figheight()])
  cmap = "gray" if grid.shape[-1] == 1 else None
  ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap=cmap, vmin=0, vmax=255,
            interpolation="nearest")
  ax.set_xticks([])
  if row_labels is not None:
    cell = images.shape[1] + padding
    ax.set_yticks([padding + r * cell + images.shape[1] / 2 for r in range(rows)],
                  [str(label) for label in row_labels], fontsize=8)
    ax.tick_params(axis="y", length=0)
  else:
    ax.set_yticks([])
  for spine in ax.spines.values():
    spine.set_visible(False)
  if title:
    ax.set_title(title, fontsize=9)
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
