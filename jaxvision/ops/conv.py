"""Channels-last convolution whose gradients are canonical convolutions.

``conv_general_dilated`` has ``lax.conv_general_dilated``'s signature and forward pass and is
meant for ``flax.linen.Conv(conv_general_dilated=...)``. Only the backward pass differs: for
channels-last inputs (``[B, *spatial, C]`` images, ``[*window, C_in, C_out]`` kernels, no
dilation, no feature/batch groups) both gradients are written as forward convolutions in the
same channels-last form, with the operands transposed explicitly:

* input gradient: ``dy`` (dilated by the stride) convolved with the spatially flipped kernel
  whose in/out axes are swapped, ``[*window, C_out, C_in]``;
* kernel gradient: the image seen as ``[C_in, *spatial, B]`` (batch as the contracted feature
  axis) convolved with ``dy`` seen as ``[*out_spatial, B, C_out]`` (dilated by the stride),
  giving ``[C_in, *window, C_out]``, transposed to ``[*window, C_in, C_out]``.

JAX's own transpose rules express the same gradients with permuted dimension numbers
(``f01b_i01o->01bf`` for the kernel gradient). In a top-level program XLA:CPU's layout
assignment turns those back into its fast (Eigen) convolution, but not inside a loop body
(``lax.scan``, ``while``), where they run a naive loop about 25x slower (jax-ml/jax#12868).
Written explicitly, the gradients are fast in both places. Values are the same up to float
summation order. Other configurations fall back to ``lax.conv_general_dilated`` unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax


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


def _forward(lhs, rhs, strides, padding, precision, preferred_element_type):
  return lax.conv_general_dilated(lhs, rhs, strides, padding,
                                  dimension_numbers=_channels_last(lhs.ndim),
                                  precision=precision,
                                  preferred_element_type=preferred_element_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(lhs, rhs, strides, padding, precision, preferred_element_type):
  return _forward(lhs, rhs, strides, padding, precision, preferred_element_type)


def _conv_fwd(lhs, rhs, strides, padding, precision, preferred_element_type):
  out = _forward(lhs, rhs, strides, padding, precision, preferred_element_type)
  return out, (lhs, rhs)


def _conv_bwd(strides, padding, precision, preferred_element_type, residuals, g):
  del preferred_element_type  # Gradients come back in the operands' dtypes.
  lhs, rhs = residuals
  n = lhs.ndim - 2  # spatial dims
  dn = _channels_last(lhs.ndim)
  window = rhs.shape[:n]
  in_size, out_size = lhs.shape[1:-1], g.shape[1:-1]
  g = g.astype(lhs.dtype)

  # Input gradient: full correlation of the stride-dilated g with the flipped, io-swapped
  # kernel. Low padding k-1-lo; high padding chosen so the result has the input's size.
  flipped = jnp.swapaxes(jnp.flip(rhs, axis=tuple(range(n))), -1, -2)  # [*K, C_out, C_in]
  dx_padding = [(k - 1 - lo, size + lo - 1 - (o - 1) * s)
                for k, (lo, _), size, o, s in zip(window, padding, in_size, out_size, strides)]
  dx = lax.conv_general_dilated(g, flipped.astype(g.dtype), (1,) * n, dx_padding,
                                lhs_dilation=strides, dimension_numbers=dn,
                                precision=precision)

  # Kernel gradient: batch is the contracted feature axis, input channels the batch axis.
  lhs_t = jnp.moveaxis(lhs, (0, -1), (-1, 0))  # [C_in, *S, B]
  g_t = jnp.moveaxis(g, 0, -2)  # [*O, B, C_out]
  dw = lax.conv_general_dilated(lhs_t, g_t, (1,) * n, padding,
                                rhs_dilation=strides, dimension_numbers=dn,
                                precision=precision)  # [C_in, >= *K, C_out]
  dw = dw[(slice(None), *(slice(0, k) for k in window), slice(None))]
  dw = jnp.moveaxis(dw, 0, -2)  # [*K, C_in, C_out]
  return dx.astype(lhs.dtype), dw.astype(rhs.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)
