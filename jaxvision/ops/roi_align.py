"""RoIAlign (He et al., Mask R-CNN) on NHWC features, single- and multi-level (FPN).

Conventions follow torchvision's ``roi_align`` / Detectron2's ``ROIAlign``:

* Boxes are ``xyxy`` in image pixels; ``spatial_scale`` (e.g. 1/16) maps them to feature-map
  coordinates. With ``aligned=True`` (default) a box is shifted by -0.5 after scaling, so pixel
  centres sit at integer + 0.5 (the half-pixel convention). With ``aligned=False`` (legacy
  Mask R-CNN) there is no shift and boxes smaller than 1x1 are grown to 1x1.
* Each output bin averages ``sampling_ratio x sampling_ratio`` bilinear samples placed at the
  centres of a regular sub-grid of the bin.
* Bilinear sampling at ``(y, x)``: 0 if ``y < -1``, ``y > H``, ``x < -1`` or ``x > W``; else
  coordinates below 0 are clamped to 0 and coordinates at or beyond ``H - 1`` / ``W - 1`` sample
  the last row / column, so boxes partly outside the map are handled as in torchvision.

Shapes: features ``[B, H, W, C]``; boxes ``[K, 4]`` plus ``box_batch_index [K]`` (the image each
box belongs to), giving ``[K, out_h, out_w, C]``; or boxes ``[B, K, 4]`` with
``box_batch_index=None``, giving ``[B, K, out_h, out_w, C]``. The result is differentiable with
respect to the features (the vjp is a scatter-add); gradients also flow into the boxes through
the interpolation weights (torchvision gives none).

Implementation: sample positions separate into a y part ``[K, out_h, S]`` and an x part
``[K, out_w, S]``; the four bilinear corners are gathered from the features flattened to
``[B, H*W, C]`` and reduced. The multi-level version concatenates all levels into one flat
array and gathers each box from its own level with a per-box offset, so it costs no more than a
single-level call (no per-level ``K x L`` work, no dynamic shapes).
"""

import functools
import math
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

Array = jnp.ndarray
Size2 = Union[int, Tuple[int, int]]


def _pair(size: Size2, name: str) -> Tuple[int, int]:
  if isinstance(size, int):
    size = (size, size)
  size = tuple(size)
  if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
    raise ValueError(f"{name} must be a positive int or a pair (h, w) of them; got {size!r}.")
  return size


def _axis_samples(start: Array, length: Array, bins: int, grid: int, n_active: Array,
                  size: Array) -> Tuple[Array, Array, Array, Array]:
  """Bilinear taps along one axis.

  Args:
    start: ``[K]`` roi start (feature coordinates, after the aligned offset).
    length: ``[K]`` roi length.
    bins: number of output bins along the axis.
    grid: static number of sample slots per bin.
    n_active: ``[K]`` samples actually used per bin (``<= grid``).
    size: ``[K]`` feature-map length along this axis (float).

  Returns:
    ``(low, high, w_low, w_high)``, each ``[K, bins, grid]``: integer corner indices and weights;
    weights are 0 for samples out of range and for inactive sample slots.
  """
  bin_size = length / bins  # [K]
  p = jnp.arange(bins, dtype=start.dtype)[None, :, None]  # [1, bins, 1]
  i = jnp.arange(grid, dtype=start.dtype)[None, None, :]  # [1, 1, grid]
  n = jnp.maximum(n_active, 1).astype(start.dtype)[:, None, None]  # [K, 1, 1]
  pos = (start[:, None, None] + p * bin_size[:, None, None] +
         (i + 0.5) * bin_size[:, None, None] / n)  # [K, bins, grid]
  size = size[:, None, None]
  inside = (pos >= -1.0) & (pos <= size) & (i < n_active[:, None, None])
  pos = jnp.maximum(pos, 0.0)
  low = jnp.floor(pos)
  at_end = low >= size - 1
  low = jnp.where(at_end, size - 1, low)
  high = jnp.where(at_end, low, low + 1)
  pos = jnp.where(at_end, low, pos)
  frac = pos - low
  w_high = jnp.where(inside, frac, 0.0)
  w_low = jnp.where(inside, 1.0 - frac, 0.0)
  return low.astype(jnp.int32), high.astype(jnp.int32), w_low, w_high


def _roi_align_flat(flat: Array, boxes: Array, batch_index: Array, heights: Array,
                    widths: Array, offsets: Array, scales: Array, output_size: Tuple[int, int],
                    sampling_ratio: int, max_sampling_ratio: Optional[int],
                    aligned: bool) -> Array:
  """RoIAlign on flattened features.

  Args:
    flat: ``[B, S, C]`` features, each box reading rows ``offsets + y * widths + x``.
    boxes: ``[K, 4]`` xyxy boxes in image pixels.
    batch_index: ``[K]`` int image index per box.
    heights, widths, offsets: ``[K]`` int32 feature-map geometry of each box's level.
    scales: ``[K]`` float spatial scale of each box's level.
    output_size: ``(out_h, out_w)``.
    sampling_ratio: > 0 fixed samples per bin axis; <= 0 adaptive.
    max_sampling_ratio: static cap for the adaptive grid.
    aligned: half-pixel offset.

  Returns:
    ``[K, out_h, out_w, C]``.
  """
  out_h, out_w = output_size
  dtype = jnp.promote_types(boxes.dtype, jnp.float32)
  boxes = boxes.astype(dtype)
  offset = 0.5 if aligned else 0.0
  scaled = boxes * scales[:, None].astype(dtype) - offset  # [K, 4]
  x1, y1, x2, y2 = scaled[:, 0], scaled[:, 1], scaled[:, 2], scaled[:, 3]
  roi_w, roi_h = x2 - x1, y2 - y1
  if not aligned:
    roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)
  if sampling_ratio > 0:
    grid_h = grid_w = sampling_ratio
    n_h = jnp.full(roi_h.shape, sampling_ratio, jnp.int32)
    n_w = n_h
  else:
    grid_h = grid_w = max_sampling_ratio
    # torchvision: ceil(roi / bins) samples (0 for inverted boxes), here capped at the bound.
    n_h = jnp.clip(jnp.ceil(roi_h / out_h), 0, max_sampling_ratio).astype(jnp.int32)
    n_w = jnp.clip(jnp.ceil(roi_w / out_w), 0, max_sampling_ratio).astype(jnp.int32)
  fh, fw = heights.astype(dtype), widths.astype(dtype)
  y_lo, y_hi, wy_lo, wy_hi = _axis_samples(y1, roi_h, out_h, grid_h, n_h, fh)  # [K, oh, Sy]
  x_lo, x_hi, wx_lo, wx_hi = _axis_samples(x1, roi_w, out_w, grid_w, n_w, fw)  # [K, ow, Sx]

  # Broadcast to [K, oh, Sy, ow, Sx].
  def rows(a):
    return a[:, :, :, None, None]

  def cols(a):
    return a[:, None, None, :, :]

  base = offsets[:, None, None, None, None]
  row_stride = widths[:, None, None, None, None]
  b = batch_index[:, None, None, None, None]
  total = 0.0
  for yi, wy in ((y_lo, wy_lo), (y_hi, wy_hi)):
    for xi, wx in ((x_lo, wx_lo), (x_hi, wx_hi)):
      idx = base + rows(yi) * row_stride + cols(xi)  # [K, oh, Sy, ow, Sx]
      w = (rows(wy) * cols(wx))[..., None]  # [K, oh, Sy, ow, Sx, 1]
      total = total + w * flat[b, idx].astype(dtype)  # [K, oh, Sy, ow, Sx, C]
  count = jnp.maximum(n_h * n_w, 1).astype(dtype)[:, None, None, None]  # [K, 1, 1, 1]
  out = total.sum(axis=(2, 4)) / count  # [K, oh, ow, C]
  return out.astype(flat.dtype)


def _check_common(output_size: Size2, sampling_ratio: int,
                  max_sampling_ratio: Optional[int]) -> Tuple[int, int]:
  output_size = _pair(output_size, "output_size")
  if not isinstance(sampling_ratio, int):
    raise ValueError(f"sampling_ratio must be a Python int; got {sampling_ratio!r}.")
  if sampling_ratio <= 0 and (not isinstance(max_sampling_ratio, int) or max_sampling_ratio < 1):
    raise ValueError(
        "sampling_ratio <= 0 asks for torchvision's adaptive grid (ceil(roi_size / output_size) "
        "samples per bin), which needs a static upper bound: pass max_sampling_ratio=<int >= 1>, "
        f"or use sampling_ratio > 0; got sampling_ratio={sampling_ratio}, "
        f"max_sampling_ratio={max_sampling_ratio!r}.")
  return output_size


def _flatten_boxes(boxes: Array, box_batch_index: Optional[Array],
                   num_images: int) -> Tuple[Array, Array, Optional[Tuple[int, int]]]:
  """Returns ([K, 4] boxes, [K] batch index, (B, K) if the batched form was used)."""
  boxes = jnp.asarray(boxes)
  if box_batch_index is None:
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != num_images:
      raise ValueError(
          f"without box_batch_index, boxes must have shape [B, K, 4] with B = {num_images} (the "
          f"features' batch); got {tuple(boxes.shape)}.")
    b, k = boxes.shape[:2]
    index = jnp.repeat(jnp.arange(b, dtype=jnp.int32), k)
    return boxes.reshape(b * k, 4), index, (b, k)
  box_batch_index = jnp.asarray(box_batch_index)
  if boxes.ndim != 2 or boxes.shape[-1] != 4 or box_batch_index.shape != boxes.shape[:1]:
    raise ValueError(
        "with box_batch_index, boxes must have shape [K, 4] and box_batch_index [K]; got "
        f"{tuple(boxes.shape)} and {tuple(box_batch_index.shape)}.")
  if not jnp.issubdtype(box_batch_index.dtype, jnp.integer):
    raise ValueError(f"box_batch_index must be integer; got dtype {box_batch_index.dtype}.")
  return boxes, box_batch_index.astype(jnp.int32), None


def _check_features(features: Array, name: str = "features") -> Array:
  features = jnp.asarray(features)
  if features.ndim != 4:
    raise ValueError(f"{name} must be NHWC [B, H, W, C]; got shape {tuple(features.shape)}.")
  return features


def roi_align(features: Array, boxes: Array, box_batch_index: Optional[Array] = None, *,
              output_size: Size2, spatial_scale: float = 1.0, sampling_ratio: int = 2,
              aligned: bool = True, max_sampling_ratio: Optional[int] = None) -> Array:
  """RoIAlign of boxes from NHWC features.

  Args:
    features: ``[B, H, W, C]`` feature map.
    boxes: ``[K, 4]`` xyxy boxes in image pixels with ``box_batch_index``, or ``[B, K, 4]`` with
      ``box_batch_index=None`` (box ``[b, k]`` reads image ``b``). Boxes may extend beyond the
      map (see the module docstring for sampling rules).
    box_batch_index: ``[K]`` int image index of each box, in ``[0, B)`` (out-of-range indices
      are clamped by the gather, not checked).
    output_size: ``out_h`` or ``(out_h, out_w)``.
    spatial_scale: feature-map size / image size, e.g. 1/16 (a traced value is fine).
    sampling_ratio: samples per bin along each axis if > 0. If <= 0, torchvision's adaptive
      ``ceil(roi_h / out_h)`` x ``ceil(roi_w / out_w)`` samples, capped at
      ``max_sampling_ratio`` (required then, since shapes are static; where the cap binds the
      result differs from torchvision).
    aligned: half-pixel offset (True: torchvision ``aligned=True`` / Detectron2 ``ROIAlignV2``).
    max_sampling_ratio: static cap on the adaptive grid, used only if ``sampling_ratio <= 0``.

  Returns:
    ``[K, out_h, out_w, C]``, or ``[B, K, out_h, out_w, C]`` for the batched box form, in the
    features' dtype (computed in at least float32).
  """
  output_size = _check_common(output_size, sampling_ratio, max_sampling_ratio)
  return _roi_align_jit(features, boxes, box_batch_index, output_size=output_size,
                        spatial_scale=spatial_scale, sampling_ratio=sampling_ratio,
                        aligned=bool(aligned), max_sampling_ratio=max_sampling_ratio)


@functools.partial(jax.jit, static_argnames=("output_size", "sampling_ratio", "aligned",
                                             "max_sampling_ratio"))
def _roi_align_jit(features, boxes, box_batch_index, *, output_size, spatial_scale,
                   sampling_ratio, aligned, max_sampling_ratio):
  features = _check_features(features)
  b, h, w, c = features.shape
  flat_boxes, index, batched = _flatten_boxes(boxes, box_batch_index, b)
  k = flat_boxes.shape[0]
  full = lambda v, dt: jnp.full((k,), v, dt)  # noqa: E731
  scale = jnp.broadcast_to(jnp.asarray(spatial_scale, jnp.float32), (k,))
  out = _roi_align_flat(features.reshape(b, h * w, c), flat_boxes, index,
                        full(h, jnp.int32), full(w, jnp.int32), full(0, jnp.int32),
                        scale, output_size, sampling_ratio, max_sampling_ratio, aligned)
  return out if batched is None else out.reshape(batched + out.shape[1:])


def assign_fpn_levels(boxes: Array, k_min: int, k_max: int, canonical_scale: float = 224.0,
                      canonical_level: int = 4, eps: float = 1e-6) -> Array:
  """FPN level of each box (Lin et al., 2017, eq. 1).

  ``k = floor(canonical_level + log2(sqrt(w * h) / canonical_scale) + eps)`` clipped to
  ``[k_min, k_max]``; ``eps`` (as torchvision's ``LevelMapper``) guards boxes whose size is
  exactly a power of two times ``canonical_scale`` against rounding down. Degenerate boxes
  (area 0) go to ``k_min``.

  Args:
    boxes: ``[..., 4]`` xyxy boxes in image pixels.
    k_min: lowest pyramid level (e.g. 2 for P2).
    k_max: highest pyramid level (e.g. 5 for P5).
    canonical_scale: box size mapped to ``canonical_level`` (224, the ImageNet size).
    canonical_level: level of a ``canonical_scale`` box (4 in the paper).

  Returns:
    ``[...]`` int32 level numbers in ``[k_min, k_max]`` (subtract ``k_min`` for a list index).
  """
  if k_min > k_max:
    raise ValueError(f"k_min must be <= k_max; got k_min={k_min}, k_max={k_max}.")
  boxes = jnp.asarray(boxes, jnp.float32)
  if boxes.shape[-1:] != (4,):
    raise ValueError(f"boxes must have shape [..., 4]; got {tuple(boxes.shape)}.")
  area = (jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0) *
          jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0))
  # log2(sqrt(area)) = 0.5 * log2(area); area 0 gives -inf, clipped to k_min below.
  level = jnp.floor(canonical_level + 0.5 * jnp.log2(area) - math.log2(canonical_scale) + eps)
  return jnp.clip(level, k_min, k_max).astype(jnp.int32)


def _levels_from_scales(spatial_scales: Sequence[float]) -> Tuple[int, int]:
  levels = [-math.log2(s) for s in spatial_scales]
  k_min = round(levels[0])
  expected = list(range(k_min, k_min + len(levels)))
  if any(abs(lv - e) > 1e-6 for lv, e in zip(levels, expected)):
    raise ValueError(
        "spatial_scales must be consecutive pyramid levels 2**-k, finest first (e.g. "
        f"(1/4, 1/8, 1/16, 1/32)); got {tuple(spatial_scales)}.")
  return k_min, k_min + len(levels) - 1


def multilevel_roi_align(features: Sequence[Array], boxes: Array,
                         box_batch_index: Optional[Array] = None, *, output_size: Size2,
                         spatial_scales: Sequence[float], sampling_ratio: int = 2,
                         aligned: bool = True, canonical_scale: float = 224.0,
                         canonical_level: int = 4,
                         max_sampling_ratio: Optional[int] = None) -> Array:
  """RoIAlign over an FPN: each box is pooled from the level :func:`assign_fpn_levels` picks.

  Args:
    features: sequence of ``L`` NHWC maps ``[B, H_l, W_l, C]``, finest first (e.g. P2..P5).
    boxes: ``[K, 4]`` xyxy image-pixel boxes with ``box_batch_index [K]``, or ``[B, K, 4]``.
    box_batch_index: as in :func:`roi_align`.
    output_size: ``out_h`` or ``(out_h, out_w)``.
    spatial_scales: ``L`` scales ``2**-k`` of consecutive levels ``k``, finest first, e.g.
      ``(1/4, 1/8, 1/16, 1/32)`` (static Python numbers); level numbers ``k_min..k_max``
      come from them (as torchvision's ``MultiScaleRoIAlign``).
    sampling_ratio, aligned, max_sampling_ratio: as in :func:`roi_align`.
    canonical_scale, canonical_level: as in :func:`assign_fpn_levels`.

  Returns:
    ``[K, out_h, out_w, C]`` (or ``[B, K, out_h, out_w, C]`` for the batched box form).
  """
  output_size = _check_common(output_size, sampling_ratio, max_sampling_ratio)
  return _multilevel_jit(list(features), boxes, box_batch_index, output_size=output_size,
                         spatial_scales=tuple(float(x) for x in spatial_scales),
                         sampling_ratio=sampling_ratio, aligned=bool(aligned),
                         canonical_scale=float(canonical_scale),
                         canonical_level=int(canonical_level),
                         max_sampling_ratio=max_sampling_ratio)


@functools.partial(jax.jit, static_argnames=("output_size", "spatial_scales", "sampling_ratio",
                                             "aligned", "canonical_scale", "canonical_level",
                                             "max_sampling_ratio"))
def _multilevel_jit(features, boxes, box_batch_index, *, output_size, spatial_scales,
                    sampling_ratio, aligned, canonical_scale, canonical_level,
                    max_sampling_ratio):
  features = [_check_features(f, f"features[{i}]") for i, f in enumerate(features)]
  if not features or len(features) != len(spatial_scales):
    raise ValueError(f"need one spatial scale per feature level; got {len(features)} levels and "
                     f"{len(spatial_scales)} scales.")
  b, c = features[0].shape[0], features[0].shape[-1]
  if any(f.shape[0] != b or f.shape[-1] != c for f in features):
    raise ValueError("all levels must share batch and channel sizes; got shapes "
                     f"{[tuple(f.shape) for f in features]}.")
  k_min, k_max = _levels_from_scales(spatial_scales)
  flat_boxes, index, batched = _flatten_boxes(boxes, box_batch_index, b)
  level = assign_fpn_levels(flat_boxes, k_min, k_max, canonical_scale,
                            canonical_level) - k_min  # [K] in [0, L)
  hs = [f.shape[1] for f in features]
  ws = [f.shape[2] for f in features]
  starts = [0]
  for h, w in zip(hs, ws):
    starts.append(starts[-1] + h * w)
  dtype = jnp.result_type(*features)
  flat = jnp.concatenate([f.reshape(b, -1, c).astype(dtype) for f in features], axis=1)
  pick = lambda values, dt: jnp.asarray(values, dt)[level]  # noqa: E731
  out = _roi_align_flat(flat, flat_boxes, index, pick(hs, jnp.int32), pick(ws, jnp.int32),
                        pick(starts[:-1], jnp.int32), pick(spatial_scales, jnp.float32),
                        output_size, sampling_ratio, max_sampling_ratio, aligned)
  return out if batched is None else out.reshape(batched + out.shape[1:])
