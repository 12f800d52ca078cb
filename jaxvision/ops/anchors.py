"""Multi-level grid anchors (torchvision ``AnchorGenerator`` conventions).

For each level ``l`` with feature map ``H_l x W_l``, stride ``(sy, sx)``, sizes ``S_l`` and
aspect ratios ``R_l`` (ratio = height / width):

* cell anchors, ``A_l = len(R_l) * len(S_l)`` of them, centred on 0, ordered **ratio-major,
  size-minor** (anchor ``a = r * len(S_l) + s``): ``h = size * sqrt(ratio)``,
  ``w = size / sqrt(ratio)``, box ``round([-w/2, -h/2, w/2, h/2])`` (torchvision rounds the cell
  anchors to integers);
* shifted to every cell's top-left corner ``(x * sx, y * sy)`` (not its centre, as torchvision);
* ordered **level, then row y, then column x, then anchor a**: the anchor at ``(l, y, x, a)``
  is row ``offset_l + (y * W_l + x) * A_l + a``. This matches a head output reshaped from
  ``[B, H_l, W_l, A_l * 4]`` to ``[B, H_l * W_l * A_l, 4]`` and concatenated over levels.

Everything depends only on static Python values, so anchors are computed once with NumPy and
returned as a constant ``[sum_l H_l * W_l * A_l, 4]`` float32 xyxy pixel array.
"""

from typing import List, Sequence, Tuple, Union

import jax.numpy as jnp
import numpy as np

Number = Union[int, float]


def _per_level(values, num_levels: int, name: str) -> List[Tuple[float, ...]]:
  """Accepts one tuple per level, or a flat tuple (sizes: one per level; ratios: shared)."""
  values = list(values)
  if values and all(isinstance(v, (int, float)) for v in values):
    if name == "sizes":
      values = [(v,) for v in values]
    else:
      values = [tuple(values)] * num_levels
  values = [tuple(float(x) for x in v) for v in values]
  if len(values) != num_levels or any(not v for v in values):
    raise ValueError(f"{name} must give a non-empty tuple for each of the {num_levels} levels; "
                     f"got {values!r}.")
  if any(x <= 0 for v in values for x in v):
    raise ValueError(f"{name} must be positive; got {values!r}.")
  return values


def cell_anchors(sizes: Sequence[Number], aspect_ratios: Sequence[Number]) -> np.ndarray:
  """Anchors of one cell centred on 0: ``[len(ratios) * len(sizes), 4]`` xyxy, ratio-major."""
  scales = np.asarray(sizes, np.float64)
  ratios = np.asarray(aspect_ratios, np.float64)
  h_ratios = np.sqrt(ratios)
  w_ratios = 1.0 / h_ratios
  ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)  # [R * S]
  hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
  return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / 2.0)


def num_anchors_per_location(sizes, aspect_ratios, num_levels: int) -> List[int]:
  """``A_l`` for each level (same argument forms as :func:`generate_anchors`)."""
  sizes = _per_level(sizes, num_levels, "sizes")
  ratios = _per_level(aspect_ratios, num_levels, "aspect_ratios")
  return [len(s) * len(r) for s, r in zip(sizes, ratios)]


def generate_anchors(feature_map_sizes: Sequence[Tuple[int, int]],
                     strides: Sequence[Union[int, Tuple[int, int]]],
                     sizes: Sequence, aspect_ratios: Sequence) -> jnp.ndarray:
  """Grid anchors for all levels.

  Args:
    feature_map_sizes: ``L`` pairs ``(H_l, W_l)``.
    strides: ``L`` strides in image pixels, an int or ``(stride_y, stride_x)`` each
      (torchvision uses ``image_size // feature_size``).
    sizes: per level a tuple of anchor sizes in pixels (``((32,), (64,), ...)``), or a flat
      tuple meaning one size per level (``(32, 64, 128, 256, 512)``).
    aspect_ratios: per level a tuple of height/width ratios, or one flat tuple used for every
      level (``(0.5, 1.0, 2.0)``).

  Returns:
    ``[sum_l H_l * W_l * A_l, 4]`` float32 xyxy anchors in image pixels, in the order given in the
    module docstring.
  """
  num_levels = len(feature_map_sizes)
  if len(strides) != num_levels:
    raise ValueError(f"need one stride per feature map; got {len(strides)} strides for "
                     f"{num_levels} maps.")
  sizes = _per_level(sizes, num_levels, "sizes")
  ratios = _per_level(aspect_ratios, num_levels, "aspect_ratios")
  out = []
  for (h, w), stride, s, r in zip(feature_map_sizes, strides, sizes, ratios):
    sy, sx = (stride, stride) if isinstance(stride, (int, float)) else tuple(stride)
    base = cell_anchors(s, r)  # [A, 4]
    ys, xs = np.meshgrid(np.arange(h) * sy, np.arange(w) * sx, indexing="ij")  # [H, W]
    shifts = np.stack([xs, ys, xs, ys], axis=-1).reshape(-1, 1, 4)  # [H * W, 1, 4]
    out.append((shifts + base[None]).reshape(-1, 4))  # [H * W * A, 4]
  return jnp.asarray(np.concatenate(out, axis=0), jnp.float32)
