"""Max pooling with gradients that are cheap on every backend, and a fused convolution + pool.

``max_pool`` has ``flax.linen.max_pool``'s values and gradients (ties go to the first maximal
element of a window in row-major order; padded positions never win; a NaN wins its window).
Only the backward pass is written differently: JAX differentiates ``reduce_window`` max into
``select_and_scatter_add``, which XLA:CPU expands into an argmax reduce-window plus a scatter
(much slower for a 2x2/2 pool; ``benchmarks/RESULTS.md``).

* Non-overlapping windows (``strides == window``, no padding), the common 2x2/2 case: the
  forward pass of a differentiated call is one variadic reduction that returns the maximum
  and the int8 window position of the first maximum (a "workspace", as cuDNN and oneDNN keep);
  the gradient is a select of the output cotangent at that position. Nothing of the input is
  recomputed or read again.
* Overlapping or padded windows: the gradient is a sum of padded selects, one per window
  position, comparing the input with the output.

``conv_max_pool`` is a stride-1 convolution followed by a non-overlapping max pool, with a
gradient that never materialises the convolution output's cotangent in the batch-major
layout: the kernel gradient's convolution consumes it batch-minor (``[*O, B, C]``), and it is
written directly in that layout from the pooled cotangent and the window positions (4x smaller
than the map), instead of being transposed from the full map. A model adds its bias after the
pool (exact: a per-channel constant commutes with the maximum), so the full-size map is never
touched by a bias add or its gradient either.

``global_average_pool`` is the mean over the spatial axes, written on CPU as a
matrix-vector product so that XLA:CPU keeps the convolutions in front of it out of a
YNNPACK reduction fusion (see there).

Shapes: images ``[B, H, W, C]`` (channels last), kernels ``[kh, kw, C_in, C_out]``.

These functions are the formulations themselves: models reach them through
``jaxvision.models.layers``, which uses them only inside ``backends.cpu.enabled()`` and
otherwise ``flax.linen.max_pool``/``lax.conv_general_dilated``/``jnp.mean``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxvision.backends.cpu import conv as conv_lib


def _pads(spatial, window, strides, padding):
  if isinstance(padding, str):
    return [tuple(int(v) for v in p) for p in
            lax.padtype_to_pads(spatial, window, strides, padding)]
  return [tuple(int(v) for v in p) for p in padding]


def max_pool(x: jax.Array, window_shape: Sequence[int], strides: Sequence[int] | None = None,
             padding: str | Sequence[tuple[int, int]] = "VALID") -> jax.Array:
  """2-D max pooling of ``x [B, H, W, C]``; same values and gradients as ``nn.max_pool``.

  ``padding``: ``'VALID'``, ``'SAME'`` or ``((top, bottom), (left, right))``; padded
  positions never win. Supports reverse mode (``jax.grad``/``vjp``) only. See the module
  docstring for how the gradient is computed.

  Returns ``[B, H', W', C]`` with ``H' = (H + top + bottom - window) // stride + 1``.
  """
  if x.ndim != 4:
    raise ValueError(f"max_pool expects x [B, H, W, C]; found shape {tuple(x.shape)}")
  window_shape = tuple(int(v) for v in window_shape)
  strides = tuple(int(v) for v in strides) if strides is not None else (1, 1)
  if len(window_shape) != 2 or len(strides) != 2:
    raise ValueError(f"max_pool expects a 2-D window and strides; found window_shape="
                     f"{window_shape}, strides={strides}")
  pads = _pads(x.shape[1:3], window_shape, strides, padding)
  if any(p != (0, 0) for p in pads):
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
  if any(x.shape[1 + i] < window_shape[i] for i in range(2)):
    raise ValueError(f"max_pool window {window_shape} is larger than the padded input "
                     f"{tuple(x.shape[1:3])}")
  if strides == window_shape:
    (kh, kw), (h, w) = window_shape, x.shape[1:3]
    return _max_pool_tiled(x[:, :h - h % kh, :w - w % kw], window_shape)
  return _max_pool_valid(x, window_shape, strides)


def _reduce_window_max(x, window_shape, strides):
  return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max, (1, *window_shape, 1),
                           (1, *strides, 1), "VALID")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_valid(x, window_shape, strides):
  return _reduce_window_max(x, window_shape, strides)


def _max_pool_valid_fwd(x, window_shape, strides):
  y = _max_pool_valid(x, window_shape, strides)
  return y, (x, y)


def _max_pool_valid_bwd(window_shape, strides, residuals, g):
  x, y = residuals
  (kh, kw), (sh, sw) = window_shape, strides
  (_, h, w, _), (_, out_h, out_w, _) = x.shape, y.shape
  zero = jnp.zeros((), g.dtype)
  dx, taken = None, None
  for i in range(kh):
    for j in range(kw):
      # The inputs at window position (i, j) of every output: rows i, i + sh, ...
      last_h, last_w = i + sh * (out_h - 1), j + sw * (out_w - 1)
      s = lax.slice(x, (0, i, j, 0), (x.shape[0], last_h + 1, last_w + 1, x.shape[3]),
                    (1, sh, sw, 1))
      hit = (s == y) | jnp.isnan(s)
      if taken is not None:
        hit = hit & ~taken  # An earlier position already holds the maximum.
      taken = hit if taken is None else taken | hit
      # Scatter back to those rows/columns: the transpose of the strided slice is a pad.
      part = lax.pad(jnp.where(hit, g, zero), zero,
                     ((0, 0, 0), (i, h - last_h - 1, sh - 1), (j, w - last_w - 1, sw - 1),
                      (0, 0, 0)))
      dx = part if dx is None else dx + part
  return (dx,)


_max_pool_valid.defvjp(_max_pool_valid_fwd, _max_pool_valid_bwd)


def pool_with_argmax(x: jax.Array, window_shape: tuple[int, int]):
  """Non-overlapping max pool of ``x [B, H, W, C]`` (``H``, ``W`` multiples of the window).

  Returns ``(y, position)``: ``y [B, H/kh, W/kw, C]`` the window maxima and ``position``
  (same shape, int8) the row-major index ``i * kw + j`` of each window's first maximal
  element, or of its first NaN (which is then the maximum). One variadic reduction.
  """
  kh, kw = window_shape
  b, h, w, c = x.shape
  k = kh * kw
  if k > 127:
    raise ValueError(f"pool_with_argmax stores positions as int8; window {window_shape} "
                     f"has {k} positions")
  # [B, Ho, kh, Wo, kw, C] -> [B, Ho, Wo, C, kh * kw]: each window along the last axis.
  windows = x.reshape(b, h // kh, kh, w // kw, kw, c).transpose(0, 1, 3, 5, 2, 4)
  windows = windows.reshape(b, h // kh, w // kw, c, k)
  positions = lax.broadcasted_iota(jnp.int8, windows.shape, 4)

  def first_max(a, b):
    (av, ai), (bv, bi) = a, b
    a_nan, b_nan, a_first = jnp.isnan(av), jnp.isnan(bv), ai < bi
    take_a = ((a_nan & (~b_nan | a_first))
              | (~a_nan & ~b_nan & ((av > bv) | ((av == bv) & a_first))))
    return jnp.where(take_a, av, bv), jnp.where(take_a, ai, bi)

  return lax.reduce((windows, positions), (jnp.array(-jnp.inf, x.dtype), jnp.int8(k)),
                    first_max, (4,))


def unpool(g: jax.Array, position: jax.Array, window_shape: tuple[int, int],
           batch_minor: bool = False) -> jax.Array:
  """The gradient of a non-overlapping max pool: ``g`` placed at ``position`` in each window.

  ``g`` and ``position`` are ``[B, Ho, Wo, C]`` (``position`` from :func:`pool_with_argmax`).
  Returns ``[B, Ho*kh, Wo*kw, C]``, or with ``batch_minor`` the same values laid out
  ``[Ho*kh, Wo*kw, B, C]`` (written directly in that order; only ``g`` and ``position``,
  4x smaller, are read transposed).
  """
  kh, kw = window_shape
  if batch_minor:
    g, position = jnp.moveaxis(g, 0, 2), jnp.moveaxis(position, 0, 2)  # [Ho, Wo, B, C]
    ho, wo, b, c = g.shape
    shape, axes, out = (ho, kh, wo, kw, b, c), (1, 3), (ho * kh, wo * kw, b, c)
    g, position = g[:, None, :, None], position[:, None, :, None]
  else:
    b, ho, wo, c = g.shape
    shape, axes, out = (b, ho, kh, wo, kw, c), (2, 4), (b, ho * kh, wo * kw, c)
    g, position = g[:, :, None, :, None], position[:, :, None, :, None]
  iota_shape = tuple(s if d in axes else 1 for d, s in enumerate(shape))
  here = (lax.broadcasted_iota(jnp.int8, iota_shape, axes[0]) * kw
          + lax.broadcasted_iota(jnp.int8, iota_shape, axes[1]))
  return jnp.where(position == here, g, jnp.zeros((), g.dtype)).reshape(out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_tiled(x, window_shape):
  return _reduce_window_max(x, window_shape, window_shape)


def _max_pool_tiled_fwd(x, window_shape):
  y, position = pool_with_argmax(x, window_shape)
  return y, position


def _max_pool_tiled_bwd(window_shape, position, g):
  return (unpool(g, position, window_shape),)


_max_pool_tiled.defvjp(_max_pool_tiled_fwd, _max_pool_tiled_bwd)


def conv_max_pool(lhs: jax.Array, rhs: jax.Array, padding="VALID",
                  window_shape: Sequence[int] = (2, 2), precision=None) -> jax.Array:
  """``max_pool(conv(lhs, rhs), window, strides=window)`` without the conv's bias.

  ``lhs [B, H, W, C_in]``, ``rhs [kh, kw, C_in, C_out]``; the convolution has stride 1 and
  ``padding`` ``'SAME'``, ``'VALID'`` or explicit ``(lo, hi)`` pairs (each at most
  ``k - 1``); the pool floors like a VALID pool, and the convolution outputs it would drop
  are not computed. Returns ``[B, Hc // ph, Wc // pw, C_out]`` for a convolution output of
  ``Hc x Wc``. Values equal ``max_pool(lax.conv_general_dilated(...))`` exactly; gradients
  equal theirs up to float summation order (ties: first maximum in row-major order).
  Reverse mode (``jax.grad``/``vjp``) only, like ``max_pool``.
  """
  if lhs.ndim != 4 or rhs.ndim != 4 or rhs.shape[2] != lhs.shape[3]:
    raise ValueError(f"conv_max_pool expects lhs [B, H, W, C_in] and rhs [kh, kw, C_in, "
                     f"C_out]; found {tuple(lhs.shape)} and {tuple(rhs.shape)}")
  window_shape = tuple(int(v) for v in window_shape)
  kernel = rhs.shape[:2]
  pads = _pads(lhs.shape[1:3], kernel, (1, 1), padding)
  if not all(0 <= lo <= k - 1 and 0 <= hi <= k - 1 for (lo, hi), k in zip(pads, kernel)):
    raise ValueError(f"conv_max_pool supports padding of at most kernel size - 1 per side; "
                     f"found {pads} for a {kernel} kernel")
  # Drop the convolution outputs the pool floors away: lower the high padding first, then
  # crop the input.
  size, crop = list(lhs.shape[1:3]), []
  for d, ((lo, hi), k, p) in enumerate(zip(pads, kernel, window_shape)):
    out = size[d] + lo + hi - k + 1
    if out < p:
      raise ValueError(f"conv_max_pool: pool window {window_shape} is larger than the "
                       f"convolution output {out} along spatial axis {d}")
    excess = out % p
    cut = min(hi, excess)
    pads[d] = (lo, hi - cut)
    crop.append(size[d] - (excess - cut))
  lhs = lhs[:, :crop[0], :crop[1]]
  return _conv_max_pool(lhs, rhs, tuple(pads), window_shape, precision)


def _conv(lhs, rhs, pads, precision):
  return conv_lib.conv_general_dilated(lhs, rhs, (1, 1), pads,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_max_pool(lhs, rhs, pads, window_shape, precision):
  return _reduce_window_max(_conv(lhs, rhs, pads, precision), window_shape, window_shape)


def _conv_max_pool_fwd(lhs, rhs, pads, window_shape, precision):
  y, position = pool_with_argmax(_conv(lhs, rhs, pads, precision), window_shape)
  return y, (lhs, rhs, position)


def _conv_max_pool_bwd(pads, window_shape, precision, residuals, g):
  lhs, rhs, position = residuals
  g = g.astype(lhs.dtype)
  kernel = rhs.shape[:2]
  dw = conv_lib.kernel_gradient(lhs, unpool(g, position, window_shape, batch_minor=True),
                                kernel, (1, 1), pads, precision)
  # Unused (and removed by XLA) when the input needs no gradient, e.g. a first layer.
  dx = conv_lib.input_gradient(unpool(g, position, window_shape), rhs, lhs.shape[1:3],
                               (1, 1), pads, precision)
  return dx.astype(lhs.dtype), dw.astype(rhs.dtype)


_conv_max_pool.defvjp(_conv_max_pool_fwd, _conv_max_pool_bwd)


def global_average_pool(x: jax.Array) -> jax.Array:
  """Mean of ``x [B, *S, C]`` over its spatial axes ``S``: ``[B, C]``, in ``x``'s dtype.

  ``jnp.mean(x, axis=S)`` up to float summation order. On CPU it is computed as a
  matrix-vector product with weights ``1 / prod(S)`` (float32 accumulation, full precision),
  because XLA:CPU (jaxlib 0.10) hands a reduction to YNNPACK together with the chain that
  produces it: in ResNet-18 CIFAR's eval step that fusion took the 7 convolutions of stages
  3-4 into one YNNPACK call, slower than XLA's own convolutions. As a dot it stays a single
  YNNPACK dot (eval and train step figures in ``benchmarks/RESULTS.md``). Elsewhere it is
  ``jnp.mean`` itself.
  """
  if x.ndim < 3 or 0 in x.shape[1:-1]:
    raise ValueError(f"global_average_pool expects [batch, *spatial, channels] with non-empty "
                     f"spatial axes; found shape {x.shape}")
  spatial = tuple(range(1, x.ndim - 1))
  count = math.prod(x.shape[1:-1])
  acc = jnp.promote_types(x.dtype, jnp.float32)
  out_dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else acc  # as jnp.mean

  def as_dot(x):
    weights = jnp.full((count,), 1.0 / count, acc)
    out = lax.dot_general(x.reshape(x.shape[0], count, x.shape[-1]).astype(acc), weights,
                          (((1,), (0,)), ((), ())), precision=lax.Precision.HIGHEST)
    return out.astype(out_dtype)

  return lax.platform_dependent(x, cpu=as_dot, default=lambda x: jnp.mean(x, axis=spatial))

