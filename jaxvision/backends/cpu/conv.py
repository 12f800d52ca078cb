"""Channels-last convolution whose gradients are canonical convolutions.

``conv_general_dilated`` has ``lax.conv_general_dilated``'s signature and forward pass and is
meant for ``flax.linen.Conv(conv_general_dilated=...)``. Only the backward pass differs: for
channels-last inputs (``[B, *spatial, C]`` images, ``[*window, C_in, C_out]`` kernels, no
dilation, no feature/batch groups) both gradients are written as forward convolutions in the
same channels-last form, with the operands transposed explicitly:

* input gradient: ``dy`` (dilated by the stride) convolved with the spatially flipped kernel
  whose in/out axes are swapped, ``[*window, C_out, C_in]``; for strides > 1 computed in
  sub-pixel form (:func:`lhs_dilated_conv`: one stride-1 convolution of the undilated ``dy``
  per output phase), because XLA:CPU multiplies through the inserted zeros of an lhs-dilated
  convolution (4x the work at stride 2);
* kernel gradient: the image seen as ``[C_in, *spatial, B]`` (batch as the contracted feature
  axis) convolved with ``dy`` seen as ``[*out_spatial, B, C_out]`` (dilated by the stride),
  giving ``[C_in, *window, C_out]``, transposed to ``[*window, C_in, C_out]``.

JAX's own transpose rules express the same gradients with permuted dimension numbers
(``f01b_i01o->01bf`` for the kernel gradient). In a top-level program XLA:CPU's layout
assignment turns those back into its fast (Eigen) convolution, but not inside a loop body
(``lax.scan``, ``while``), where they run a naive loop many times slower (jax-ml/jax#12868).
Written explicitly, the gradients are fast in both places. Values are the same up to float
summation order. Depthwise convolutions (``feature_group_count`` equal to the channels) are
:func:`depthwise_conv`, a sum of shifted slices. Other configurations fall back to
``lax.conv_general_dilated`` unchanged.

On CPU the kernel gradient transposes its (large) image operand through a fusion barrier
(:func:`moveaxis_stored`): otherwise XLA:CPU recomputes the BatchNorm/ReLU chain that
produced the image inside the batch-minor layout change and emits that fusion as an untiled
loop whose reads stride by a whole image, several times slower than transposing the stored
activation.

On a CPU backend, 2-D float32 convolutions of this form run on oneDNN instead (forward,
input gradient and kernel gradient as XLA FFI custom calls, see
:mod:`jaxvision.backends.cpu.onednn`) when ``context.onednn_active()`` at trace time;
everything above is then the path for other dtypes, other ranks, other platforms and
multi-device steps.

:func:`conv_transpose` is ``lax.conv_transpose`` (channels last, ``transpose_kernel=False``)
in the same sub-pixel form: a DCGAN generator's 4x4 stride-2 transposed convolutions do a
quarter of the multiply-adds (DCGAN step figures in ``benchmarks/RESULTS.md``).

These functions are the formulations themselves: models reach them through
``jaxvision.models.layers``, which uses them only inside ``backends.cpu.enabled()``.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxvision.backends.cpu import context, onednn


def _channels_last(ndim: int) -> lax.ConvDimensionNumbers:
  spatial = tuple(range(1, ndim - 1))
  return lax.ConvDimensionNumbers(lhs_spec=(0, ndim - 1, *spatial),
                                  rhs_spec=(ndim - 1, ndim - 2, *range(ndim - 2)),
                                  out_spec=(0, ndim - 1, *spatial))


def _is_one(dilation) -> bool:
  return dilation is None or all(d == 1 for d in dilation)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding, lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None) -> jax.Array:
  """``lax.conv_general_dilated`` with explicit channels-last gradients (see module doc).

  Args and result as ``lax.conv_general_dilated``. The custom gradient is used for
  channels-last operands (``lhs [B, *S, C_in]``, ``rhs [*K, C_in, C_out]``) without lhs/rhs
  dilation or groups and with padding no larger than ``kernel size - 1`` on each side (all
  of Flax's 'SAME'/'VALID' cases); anything else is passed to ``lax.conv_general_dilated``.
  """
  ndim = lhs.ndim
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  window = rhs.shape[:-2]
  if (dn == _channels_last(ndim) and _is_one(lhs_dilation) and _is_one(rhs_dilation)
      and batch_group_count == 1 and feature_group_count > 1
      and feature_group_count == lhs.shape[-1] == rhs.shape[-1] and rhs.shape[-2] == 1
      and preferred_element_type is None):
    return depthwise_conv(lhs, rhs, window_strides, padding)
  simple = (dn == _channels_last(ndim) and _is_one(lhs_dilation) and _is_one(rhs_dilation)
            and feature_group_count == 1 and batch_group_count == 1)
  if simple:
    pads = (lax.padtype_to_pads(lhs.shape[1:-1], window, window_strides, padding)
            if isinstance(padding, str) else padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    simple = all(0 <= lo <= k - 1 and 0 <= hi <= k - 1 for (lo, hi), k in zip(pads, window))
  if not simple:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
  return _conv(lhs, rhs, tuple(int(s) for s in window_strides), pads, precision,
               preferred_element_type)


def depthwise_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                   padding) -> jax.Array:
  """Channels-last depthwise convolution as a sum of shifted, scaled slices.

  ``lhs [B, *S, C]``, ``rhs [*K, 1, C]`` (``feature_group_count == C``, as MobileNet and
  EfficientNet use it), ``padding`` a ``lax`` padding string or ``(lo, hi)`` pairs. Returns
  ``lax.conv_general_dilated(..., feature_group_count=C)``'s result ``[B, *O, C]``: for each
  of the ``prod(K)`` taps, the (strided) slice of the padded input it meets times the tap's
  ``[C]`` weights, summed. XLA:CPU runs grouped convolutions, and above all their gradients,
  as slow generic loops; the shifted form is elementwise work it fuses, and its gradients
  (pads and reductions of the same products) follow by autodiff. Depthwise train-step
  figures: ``benchmarks/RESULTS.md``.
  """
  n = lhs.ndim - 2
  window = rhs.shape[:n]
  strides = tuple(int(s) for s in window_strides)
  in_size = lhs.shape[1:-1]
  pads = (lax.padtype_to_pads(in_size, window, strides, padding)
          if isinstance(padding, str) else padding)
  pads = [(int(lo), int(hi)) for lo, hi in pads]
  out_size = [(h + lo + hi - k) // s + 1 for h, (lo, hi), k, s in zip(in_size, pads, window,
                                                                       strides)]
  if min(out_size) < 1:
    raise ValueError(f"depthwise_conv: empty output {out_size} for input {in_size}, kernel "
                     f"{window}, strides {strides}, padding {pads}")
  # Negative padding crops; lax.pad takes both signs.
  padded = lax.pad(lhs, jnp.zeros((), lhs.dtype),
                   [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)])
  out = None
  for tap in itertools.product(*(range(k) for k in window)):
    start = (0, *tap, 0)
    limit = (lhs.shape[0], *(t + (o - 1) * s + 1 for t, o, s in zip(tap, out_size, strides)),
             lhs.shape[-1])
    term = lax.slice(padded, start, limit, (1, *strides, 1)) * rhs[tap][0].astype(lhs.dtype)
    out = term if out is None else out + term
  return out

def _forward(lhs, rhs, strides, padding, precision, preferred_element_type):
  def xla(lhs, rhs):
    return lax.conv_general_dilated(lhs, rhs, strides, padding,
                                    dimension_numbers=_channels_last(lhs.ndim),
                                    precision=precision,
                                    preferred_element_type=preferred_element_type)

  if _use_onednn(lhs, rhs) and preferred_element_type in (None, jnp.float32):
    cpu = functools.partial(onednn.forward, strides=strides, padding=padding)
    return lax.platform_dependent(lhs, rhs, cpu=cpu, default=xla)
  return xla(lhs, rhs)


def _use_onednn(lhs, rhs) -> bool:
  return onednn.supports(lhs, rhs) and context.onednn_active()


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(lhs, rhs, strides, padding, precision, preferred_element_type):
  return _forward(lhs, rhs, strides, padding, precision, preferred_element_type)


def _conv_fwd(lhs, rhs, strides, padding, precision, preferred_element_type):
  out = _forward(lhs, rhs, strides, padding, precision, preferred_element_type)
  return out, (lhs, rhs)


def _conv_bwd(strides, padding, precision, preferred_element_type, residuals, g):
  del preferred_element_type  # Gradients come back in the operands' dtypes.
  lhs, rhs = residuals
  g = g.astype(lhs.dtype)
  in_size, window = lhs.shape[1:-1], rhs.shape[:-2]

  def xla_dx(g, rhs):
    return input_gradient(g, rhs, in_size, strides, padding, precision)

  def xla_dw(lhs, g):
    return kernel_gradient(lhs, jnp.moveaxis(g, 0, -2), window, strides, padding, precision)

  if _use_onednn(lhs, rhs):
    cpu_dx = functools.partial(onednn.backward_data, in_size=in_size, strides=strides,
                               padding=padding)
    cpu_dw = functools.partial(onednn.backward_weights, window=window, strides=strides,
                               padding=padding)
    dx = lax.platform_dependent(g, rhs, cpu=cpu_dx, default=xla_dx)
    dw = lax.platform_dependent(lhs, g, cpu=cpu_dw, default=xla_dw)
  else:
    dx, dw = xla_dx(g, rhs), xla_dw(lhs, g)
  return dx.astype(lhs.dtype), dw.astype(rhs.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def input_gradient(g, rhs, in_size, strides, padding, precision=None):
  """Gradient of a channels-last convolution with respect to its input.

  ``g [B, *O, C_out]`` is the output's cotangent, ``rhs [*K, C_in, C_out]`` the kernel,
  ``in_size`` the input's spatial size, ``padding`` explicit ``(lo, hi)`` pairs with
  ``0 <= lo, hi <= k - 1``. Returns ``[B, *in_size, C_in]``: the full correlation of the
  stride-dilated ``g`` with the flipped, io-swapped kernel (low padding ``k-1-lo``, high
  padding so the result has the input's size), in sub-pixel form for strides > 1.
  """
  n = len(in_size)
  window, out_size = rhs.shape[:n], g.shape[1:-1]
  flipped = jnp.swapaxes(jnp.flip(rhs, axis=tuple(range(n))), -1, -2)  # [*K, C_out, C_in]
  dx_padding = [(k - 1 - lo, size + lo - 1 - (o - 1) * s)
                for k, (lo, _), size, o, s in zip(window, padding, in_size, out_size, strides)]
  return lhs_dilated_conv(g, flipped.astype(g.dtype), strides, dx_padding, precision=precision)


def kernel_gradient(lhs, g_t, window, strides, padding, precision=None):
  """Gradient of a channels-last convolution with respect to its kernel.

  ``lhs [B, *S, C_in]`` is the input and ``g_t [*O, B, C_out]`` the output's cotangent with
  the batch moved next to the channels (the layout this convolution consumes; a caller that
  can produce it directly saves a transpose). Returns ``[*window, C_in, C_out]``: the image
  seen as ``[C_in, *S, B]`` (batch as the contracted feature axis) convolved with ``g_t``
  dilated by the stride.
  """
  n = lhs.ndim - 2
  lhs_t = moveaxis_stored(lhs, (0, -1), (-1, 0))  # [C_in, *S, B]
  dw = lax.conv_general_dilated(lhs_t, g_t.astype(lhs.dtype), (1,) * n, padding,
                                rhs_dilation=strides, dimension_numbers=_channels_last(lhs.ndim),
                                precision=precision)  # [C_in, >= *K, C_out]
  dw = dw[(slice(None), *(slice(0, k) for k in window), slice(None))]
  return jnp.moveaxis(dw, 0, -2)  # [*K, C_in, C_out]


# Arrays from this size on are transposed through the barrier in :func:`moveaxis_stored`.
STORED_MIN_BYTES = 4 << 20


def moveaxis_stored(x: jax.Array, source, destination) -> jax.Array:
  """``jnp.moveaxis(x, source, destination)`` read from ``x``'s buffer (a fusion barrier on CPU).

  XLA:CPU fuses cheap elementwise producers into their consumers even when that duplicates
  them. For the layout change in front of a kernel-gradient convolution (``[B, *S, C] ->
  [C, *S, B]``) that means recomputing BatchNorm + ReLU inside a transpose, which XLA:CPU
  then emits as an untiled loop reading one element per image row, several times slower than
  transposing the stored activation (``benchmarks/RESULTS.md``). Here the
  transpose is the body of a ``lax.cond``, a boundary XLA does not fuse across
  (``lax.optimization_barrier`` is removed before fusion on CPU, and an identity ``cond`` is
  forwarded away by JAX). Both branches are the same transpose, so the value never depends
  on the runtime predicate. ResNet-18 CIFAR train step figures: ``benchmarks/RESULTS.md``.

  Applied on CPU to arrays of at least ``STORED_MIN_BYTES`` (4 MiB). Below that the fused
  transpose is cheap and the barrier costs more than it saves (measured on SimpleCNN's
  second convolution input, 2.7 MB; ``benchmarks/RESULTS.md``). On GPU and TPU it is a plain
  ``jnp.moveaxis``: their transposes are tiled, and a conditional there could synchronise
  with the host.
  """
  move = functools.partial(jnp.moveaxis, source=source, destination=destination)
  if x.size * x.dtype.itemsize < STORED_MIN_BYTES:
    return move(x)

  def barrier(x):
    return lax.cond(x.reshape(-1)[0] == 0, move, move, x)

  return lax.platform_dependent(x, cpu=barrier, default=move)


def lhs_dilated_conv(lhs: jax.Array, rhs: jax.Array, lhs_dilation: Sequence[int], padding,
                     precision=None) -> jax.Array:
  """Stride-1 channels-last correlation of the ``lhs_dilation``-dilated ``lhs`` with ``rhs``.

  Equals ``lax.conv_general_dilated(lhs, rhs, (1,) * n, padding, lhs_dilation=lhs_dilation)``
  for ``lhs [B, *S, C_in]`` and ``rhs [*K, C_in, C_out]`` (padding: explicit ``(lo, hi)``
  pairs on the dilated input, negative values crop), without touching the inserted zeros.
  Output position ``i = s * m + r`` only meets the taps ``t = t0, t0 + s, ...`` with
  ``t0 = (lo - r) mod s``, so each of the ``prod(s)`` phases ``r`` is a stride-1 VALID
  convolution of the undilated input (shifted and padded per phase) with the sub-kernel
  ``rhs[t0::s]``; the phase outputs are interleaved (depth-to-space). That is ``prod(s)`` times fewer
  multiply-adds than the dilated form, which XLA:CPU computes over the zeros. This is the
  sub-pixel form of a transposed convolution (the input gradient of a strided convolution,
  and ``ConvTranspose``); its gradients are those of :func:`conv_general_dilated`.

  The sub-pixel form is staged for CPU only (``lax.platform_dependent``); on GPU and TPU the
  dilated convolution goes to the backend as is (cuDNN and XLA:TPU skip the zeros
  themselves, where one kernel should beat ``prod(s)`` small ones and an interleave).
  """
  n = lhs.ndim - 2
  dilation = tuple(int(s) for s in lhs_dilation)
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  if all(s == 1 for s in dilation):
    return conv_general_dilated(lhs, rhs, (1,) * n, padding,
                                dimension_numbers=_channels_last(lhs.ndim),
                                precision=precision)
  window, in_size = rhs.shape[:n], lhs.shape[1:-1]
  out_size = [s * (h - 1) + 1 + lo + hi - k + 1
              for s, h, (lo, hi), k in zip(dilation, in_size, padding, window)]
  if min(out_size) < 1:
    raise ValueError(f"lhs_dilated_conv: empty output {out_size} for input {in_size}, "
                     f"kernel {window}, dilation {dilation}, padding {padding}")

  def dilated(lhs, rhs):
    return lax.conv_general_dilated(lhs, rhs, (1,) * n, padding, lhs_dilation=dilation,
                                    dimension_numbers=_channels_last(lhs.ndim),
                                    precision=precision)

  sub_pixel = functools.partial(_sub_pixel_conv, dilation=dilation, padding=padding,
                                out_size=tuple(out_size), precision=precision)
  return lax.platform_dependent(lhs, rhs, cpu=sub_pixel, default=dilated)


def _sub_pixel_conv(lhs, rhs, *, dilation, padding, out_size, precision):
  """:func:`lhs_dilated_conv` as ``prod(dilation)`` stride-1 convolutions, interleaved."""
  n = lhs.ndim - 2
  window, in_size = rhs.shape[:n], lhs.shape[1:-1]
  phases_per_dim = []
  for s, h, (lo, _), k, size in zip(dilation, in_size, padding, window, out_size):
    count = -(-size // s)  # outputs per phase (the last phases may be cropped below)
    per_phase = []
    for r in range(s):
      first_tap = (lo - r) % s
      taps = len(range(first_tap, k, s))
      offset = (r + first_tap - lo) // s  # input index of tap first_tap at output m = 0
      # Input window q = offset .. offset + count + taps - 2, zero outside [0, h).
      pad = (-offset, offset + count + taps - 1 - h)
      per_phase.append((first_tap, taps, pad))
    phases_per_dim.append((count, per_phase))
  counts = [c for c, _ in phases_per_dim]
  batch, c_out = lhs.shape[0], rhs.shape[-1]
  out_dtype = jnp.result_type(lhs.dtype, rhs.dtype)
  outputs = []
  for phase in itertools.product(*(per_phase for _, per_phase in phases_per_dim)):
    if any(taps == 0 for _, taps, _ in phase):
      outputs.append(jnp.zeros((batch, *counts, c_out), out_dtype))
      continue
    x = lax.pad(lhs, jnp.zeros((), lhs.dtype),
                [(0, 0, 0), *((lo, hi, 0) for _, _, (lo, hi) in phase), (0, 0, 0)])
    kernel = rhs[tuple(slice(t0, None, s) for (t0, _, _), s in zip(phase, dilation))]
    outputs.append(_conv(x, kernel, (1,) * n, ((0, 0),) * n, precision, None))
  y = jnp.stack(outputs).reshape(*dilation, batch, *counts, c_out)
  # [s_1..s_n, B, n_1..n_n, C] -> [B, n_1, s_1, ..., n_n, s_n, C] -> [B, n_1 s_1, ..., C]
  order = [n] + [a for d in range(n) for a in (n + 1 + d, d)] + [2 * n + 1]
  y = jnp.transpose(y, order).reshape(batch, *(c * s for c, s in zip(counts, dilation)), c_out)
  return y[(slice(None), *(slice(0, size) for size in out_size), slice(None))]


def conv_transpose_padding(kernel_size: int, stride: int, padding: str) -> tuple[int, int]:
  """``(lo, hi)`` padding of the dilated input in ``lax.conv_transpose`` ('SAME'/'VALID')."""
  if padding == "SAME":
    total = kernel_size + stride - 2
    lo = kernel_size - 1 if stride > kernel_size - 1 else -(-total // 2)
  elif padding == "VALID":
    total = kernel_size + stride - 2 + max(kernel_size - stride, 0)
    lo = kernel_size - 1
  else:
    raise ValueError(f"padding must be 'SAME', 'VALID' or explicit pairs; found {padding!r}")
  return lo, total - lo


def conv_transpose(lhs: jax.Array, rhs: jax.Array, strides: Sequence[int], padding,
                   precision=None) -> jax.Array:
  """``lax.conv_transpose`` for channels-last operands, in sub-pixel form on CPU.

  ``lhs [B, *S, C_in]``, ``rhs [*K, C_in, C_out]`` (``transpose_kernel=False``, as
  ``flax.linen.ConvTranspose``); ``padding`` is 'SAME', 'VALID' or explicit ``(lo, hi)``
  pairs on the dilated input. Same values as ``lax.conv_transpose(..., dimension_numbers=
  ('NHWC', 'HWIO', 'NHWC'))`` up to float summation order; see :func:`lhs_dilated_conv`.
  """
  n = lhs.ndim - 2
  strides = tuple(int(s) for s in strides)
  if isinstance(padding, str):
    padding = [conv_transpose_padding(k, s, padding) for k, s in zip(rhs.shape[:n], strides)]
  return lhs_dilated_conv(lhs, rhs, strides, padding, precision=precision)
