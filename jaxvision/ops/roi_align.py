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
respect to the features (forward and reverse mode) and, through the interpolation weights, the
boxes (torchvision gives none).

Sample positions are computed with torchvision's float32 operations in its order, with
correctly rounded divisions (:func:`div_exact`) even under ``jit``, where XLA would otherwise
multiply by a rounded reciprocal: a sample that torchvision puts exactly on ``x == W`` or an
adaptive count of ``ceil(21 / 7) = 3`` come out the same here.

Implementation (see ``benchmarks/roi_align.py`` for the figures against torchvision): sample
positions separate into y taps ``[K, out_h, 2 S]`` (the low and high rows of the ``S`` samples
of each bin, weights including the bin's ``1 / S``) and x taps ``[K, out_w, 2 S]``. The forward
pass sums ``(2 S)**2`` gathers of ``C``-vectors from the features flattened to ``[B*H*W, C]``,
all in one fused loop over the output (no gathered intermediate). The gradient is a custom
JVP whose tangent runs over chunks of a few RoIs: its transpose, the backward pass, is one
scatter-add per chunk into the carried feature gradient, which stays in cache and needs memory
for one chunk only (autodiff of the forward would scatter all taps at once, from
``(2 S)**2`` output-sized update arrays). The multi-level version concatenates all levels into
one flat array and gathers each box from its own level with a per-box offset, so it costs no
more than a single-level call (no per-level ``K x L`` work, no dynamic shapes).
"""

import functools
import math
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

Array = jnp.ndarray
Size2 = Union[int, Tuple[int, int]]

# Gathered bytes per chunk of RoIs in the tangent / backward pass (see _tangent). On CPU, small
# enough that a chunk's scatter-add works in cache (1-4 MiB measured best, benchmarks/RESULTS.md);
# on accelerators, large enough that the loop has few iterations.
TANGENT_CHUNK_BYTES = 2 << 20
ACCELERATOR_CHUNK_BYTES = 64 << 20
# Taps per output bin summed in one unrolled, fused forward; above it, a loop over y taps.
MAX_UNROLLED_TAPS = 64


def _pair(size: Size2, name: str) -> Tuple[int, int]:
  if isinstance(size, int):
    size = (size, size)
  size = tuple(size)
  if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
    raise ValueError(f"{name} must be a positive int or a pair (h, w) of them; got {size!r}.")
  return size


def _remainder(a: Array, q: Array, n: Array) -> Array:
  """``a - q * n`` exactly (float32), for ``q`` within a few ulps of ``a / n``, integer n < 2**12.

  ``q`` is split into ``hi`` (its top 12 significant bits) and ``lo = q - hi`` (exact, at most
  12 bits), so ``hi * n`` and ``lo * n`` are exact; ``a - hi * n`` is exact by Sterbenz's lemma
  (the two are within a factor 2), and the final difference is a small multiple of ``q``'s ulp.
  """
  bits = lax.bitcast_convert_type(q, jnp.int32)
  hi = lax.bitcast_convert_type(bits & jnp.int32(-4096), jnp.float32)  # low 12 bits cleared
  lo = q - hi
  return (a - hi * n) - lo * n


def div_exact(a: Array, n) -> Array:
  """Correctly rounded float32 ``a / n`` for integer-valued ``n`` in ``[1, 4096)``.

  Under ``jit`` XLA turns a division by a constant into a multiplication by its rounded
  reciprocal (``21 * (1/7)`` is not 3 in float32, ``42 * (1/7)`` is 6.0000005), which moves
  samples off exact positions and ``ceil`` up by one. Whatever the division returns, two steps
  to a neighbouring float that leaves a smaller exact remainder give the correctly rounded
  quotient (the one torchvision's C++ computes), jitted or not. Other dtypes divide plainly.
  Differentiable as ``a / n``.

  Args:
    a: float array.
    n: Python int or array broadcastable to ``a`` holding integers in ``[1, 4096)``.

  Returns:
    ``a / n`` rounded to nearest, the broadcast shape, ``a``'s dtype.
  """
  a = jnp.asarray(a)
  if a.dtype != jnp.float32:
    return a / n
  return _div_exact_f32(a, jnp.asarray(n, jnp.float32))


@jax.custom_jvp
def _div_exact_f32(a: Array, n: Array) -> Array:
  q = a / n
  for _ in range(2):  # a reciprocal product is within 2 ulps of the quotient
    r = jnp.abs(_remainder(a, q, n))
    for side in (jnp.inf, -jnp.inf):
      step = jnp.nextafter(q, jnp.asarray(side, a.dtype))
      r_step = jnp.abs(_remainder(a, step, n))
      better = r_step < r
      q, r = jnp.where(better, step, q), jnp.where(better, r_step, r)
  return q


@_div_exact_f32.defjvp
def _div_exact_f32_jvp(primals, tangents):
  (a, n), (a_dot, n_dot) = primals, tangents
  q = _div_exact_f32(a, n)
  return q, (a_dot - q * n_dot) / n


def _axis_taps(start: Array, length: Array, bins: int, grid: int, n_active: Array,
               size: Array) -> Tuple[Array, Array]:
  """Bilinear taps along one axis, torchvision's sample positions and edge rule.

  Args:
    start: ``[K]`` roi start (feature coordinates, after the aligned offset), float32.
    length: ``[K]`` roi length.
    bins: number of output bins along the axis.
    grid: static number of sample slots per bin.
    n_active: ``[K]`` int32 samples actually used per bin (``<= grid``; 0 for none).
    size: ``[K]`` int32 feature-map length along this axis.

  Returns:
    ``(index, weight)``, each ``[K, bins, 2 * grid]``: int32 positions in ``[0, size)`` (the
    low corners of the samples, then the high corners) and weights that include the ``1 / n``
    of the bin's average; 0 for samples outside ``[-1, size]`` and for inactive slots.
  """
  dtype = start.dtype
  n = jnp.maximum(n_active, 1)[:, None, None]  # [K, 1, 1]
  bin_size = div_exact(length, bins)[:, None, None]  # [K, 1, 1]
  p = jnp.arange(bins, dtype=dtype)[None, :, None]  # [1, bins, 1]
  i = jnp.arange(grid, dtype=dtype)[None, None, :]  # [1, 1, grid]
  # torchvision: start + p * bin + (i + .5) * bin / n, each operation rounded as in C++.
  pos = start[:, None, None] + p * bin_size + div_exact((i + 0.5) * bin_size, n)
  fsize = size.astype(dtype)[:, None, None]
  inside = (pos >= -1.0) & (pos <= fsize) & (i < n_active[:, None, None])
  pos = jnp.maximum(pos, 0.0)
  low = jnp.floor(pos)
  at_end = low >= fsize - 1  # at or past the last row/column: sample it exactly
  low = jnp.where(at_end, fsize - 1, low)
  frac = jnp.where(at_end, 0.0, pos - low)
  scale = 1.0 / n.astype(dtype)
  w_low = jnp.where(inside, 1.0 - frac, 0.0) * scale
  w_high = jnp.where(inside, frac, 0.0) * scale
  last = size[:, None, None] - 1
  # The clip only matters for NaN/inf positions (weight 0): keeps every read in bounds.
  low_i = jnp.clip(low.astype(jnp.int32), 0, last)
  high_i = jnp.clip(jnp.where(at_end, low_i, low_i + 1), 0, last)
  return (jnp.concatenate([low_i, high_i], axis=-1),
          jnp.concatenate([w_low, w_high], axis=-1))


def _gather(flat: Array, index: Array, dtype) -> Array:
  """``flat[index]`` rows (``[..., C]``); every index is in bounds by construction."""
  return flat.at[index].get(mode="promise_in_bounds").astype(dtype)


def _forward(flat: Array, row: Array, wy: Array, col: Array, wx: Array, dtype) -> Array:
  """Sum over taps of ``wy * wx * flat[row + col]``: ``[K, oh, ow, C]``.

  All ``Ty * Tx`` gathers sit in one fused loop over the output (no gathered intermediate);
  above ``MAX_UNROLLED_TAPS`` taps, a loop over the ``Ty`` y taps with the x taps unrolled.
  """
  ty_count, tx_count = row.shape[-1], col.shape[-1]

  def y_tap(acc, ry, wyt):  # ry, wyt: [K, oh]
    for tx in range(tx_count):
      index = ry[:, :, None] + col[:, None, :, tx]  # [K, oh, ow]
      w = (wyt[:, :, None] * wx[:, None, :, tx])[..., None]  # [K, oh, ow, 1]
      term = w * _gather(flat, index, dtype)
      acc = term if acc is None else acc + term
    return acc

  if ty_count * tx_count <= MAX_UNROLLED_TAPS:
    acc = None
    for ty in range(ty_count):
      acc = y_tap(acc, row[..., ty], wy[..., ty])
    return acc
  first = y_tap(None, row[..., 0], wy[..., 0])
  rest = (jnp.moveaxis(row[..., 1:], -1, 0), jnp.moveaxis(wy[..., 1:], -1, 0))
  acc, _ = lax.scan(lambda acc, xs: (y_tap(acc, *xs), None), first, rest)
  return acc


def _chunk_size(k: int, row: Array, col: Array, channels: int, dtype) -> int:
  """RoIs per chunk of :func:`_tangent`: within the byte budget, a divisor of ``k`` if one is
  at least half the budget's count (no padded copy of the cotangent), else the budget's count."""
  per_roi = (row.shape[1] * col.shape[1] * row.shape[2] * col.shape[2] * channels *
             jnp.dtype(dtype).itemsize)
  budget = TANGENT_CHUNK_BYTES if jax.default_backend() == "cpu" else ACCELERATOR_CHUNK_BYTES
  chunk = max(1, min(k, budget // max(per_roi, 1)))
  divisor = next(d for d in range(chunk, 0, -1) if k % d == 0) if k else chunk
  return divisor if 2 * divisor >= chunk else chunk


def _tangent(flat: Array, dflat: Optional[Array], row: Array, wy: Array, dwy: Optional[Array],
             col: Array, wx: Array, dwx: Optional[Array], dtype) -> Array:
  """Tangent of :func:`_forward`, linear in ``(dflat, dwy, dwx)`` (None: zero), ``[K, oh, ow, C]``.

  A loop over chunks of RoIs; each gathers its ``[c, oh, ow, Ty, Tx, C]`` taps once and
  reduces them. Its transpose (the backward pass) is then one scatter-add per chunk into the
  features' gradient carried through the loop: each scatter's rows are the taps of a few
  neighbouring RoIs, so it works in cache, and memory stays at one chunk (``jax.checkpoint``
  recomputes the primal gather the box gradient needs instead of storing it).
  """
  k, oh, ow = row.shape[0], row.shape[1], col.shape[1]
  chunk = _chunk_size(k, row, col, flat.shape[-1], dtype)
  n_chunks = -(-k // chunk)
  pad = n_chunks * chunk - k

  def split(a):
    if a is None:
      return None
    a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
    return a.reshape((n_chunks, chunk) + a.shape[1:])

  def body(_, xs):
    ry, wyc, dwyc, cx, wxc, dwxc = xs
    index = ry[:, :, None, :, None] + cx[:, None, :, None, :]  # [c, oh, ow, Ty, Tx]
    out = None

    def add(out, w, source):
      term = (w[..., None] * _gather(source, index, dtype)).sum(axis=(3, 4))
      return term if out is None else out + term

    if dflat is not None:
      out = add(out, wyc[:, :, None, :, None] * wxc[:, None, :, None, :], dflat)
    dw = None
    if dwyc is not None:
      dw = dwyc[:, :, None, :, None] * wxc[:, None, :, None, :]
    if dwxc is not None:
      term = wyc[:, :, None, :, None] * dwxc[:, None, :, None, :]
      dw = term if dw is None else dw + term
    if dw is not None:
      out = add(out, dw, flat)
    return None, out

  xs = tuple(split(a) for a in (row, wy, dwy, col, wx, dwx))
  _, out = lax.scan(jax.checkpoint(body, prevent_cse=False), None, xs)
  return out.reshape((n_chunks * chunk, oh, ow, out.shape[-1]))[:k]


@functools.partial(jax.custom_jvp, nondiff_argnums=(5,))
def _sample(flat: Array, row: Array, wy: Array, col: Array, wx: Array, dtype) -> Array:
  """Bilinear RoI sampling ``[K, oh, ow, C]`` from ``flat [N, C]`` (see :func:`_forward`).

  ``row [K, oh, Ty]`` holds flat row offsets (batch and level base plus ``y * width``),
  ``col [K, ow, Tx]`` x positions, ``wy``/``wx`` the matching weights.
  """
  return _forward(flat, row, wy, col, wx, dtype)


def _sample_jvp(dtype, primals, tangents):
  flat, row, wy, col, wx = primals
  dflat, _, dwy, _, dwx = (None if isinstance(t, SymbolicZero) else t for t in tangents)
  out = _forward(flat, row, wy, col, wx, dtype)
  if dflat is None and dwy is None and dwx is None:
    return out, jnp.zeros_like(out)
  return out, _tangent(flat, dflat, row, wy, dwy, col, wx, dwx, dtype)


_sample.defjvp(_sample_jvp, symbolic_zeros=True)


def _roi_align_flat(flat: Array, boxes: Array, batch_index: Array, heights: Array,
                    widths: Array, offsets: Array, scales: Array, output_size: Tuple[int, int],
                    sampling_ratio: int, max_sampling_ratio: Optional[int],
                    aligned: bool) -> Array:
  """RoIAlign on flattened features.

  Args:
    flat: ``[B, S, C]`` features, each box reading rows ``offsets + y * widths + x``.
    boxes: ``[K, 4]`` xyxy boxes in image pixels.
    batch_index: ``[K]`` int image index per box (clamped to ``[0, B)``).
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
  b, s, c = flat.shape
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
    # torchvision: ceil(roi / bins) samples of the float quotient (0 for inverted boxes), here
    # capped at the bound. The quotient is correctly rounded, so 21 / 7 gives 3, not 4.
    n_h = jnp.clip(jnp.ceil(div_exact(roi_h, out_h)), 0, max_sampling_ratio).astype(jnp.int32)
    n_w = jnp.clip(jnp.ceil(div_exact(roi_w, out_w)), 0, max_sampling_ratio).astype(jnp.int32)
  y, wy = _axis_taps(y1, roi_h, out_h, grid_h, n_h, heights)  # [K, oh, 2 * grid_h]
  x, wx = _axis_taps(x1, roi_w, out_w, grid_w, n_w, widths)  # [K, ow, 2 * grid_w]
  base = jnp.clip(batch_index, 0, b - 1) * s + offsets  # [K]
  row = base[:, None, None] + y * widths[:, None, None]  # [K, oh, 2 * grid_h]
  out = _sample(flat.reshape(b * s, c), row, wy, x, wx, dtype)
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
