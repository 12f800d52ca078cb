"""Layers shared by the models.

``Conv`` is ``flax.linen.Conv`` computing with ``jaxvision.ops.conv_general_dilated``: the same
parameters, names and forward pass, with gradients written as channels-last convolutions so
they stay on XLA:CPU's fast convolution path inside loops (``lax.scan`` over steps or time,
see ``jaxvision/ops/conv.py``), and with the input gradient of strided convolutions in
sub-pixel form on CPU (no multiply-adds with the stride's inserted zeros, which XLA:CPU
computes for ``lax``'s own lhs-dilated gradient). All the models' convolutions use it.

``ConvTranspose`` is ``flax.linen.ConvTranspose`` (``transpose_kernel=False``; same parameter
names, shapes and initialisers) computing with ``jaxvision.ops.conv_transpose``: on CPU the
sub-pixel form of the transposed convolution, equal up to float summation order (elsewhere
``lax``'s own).

``ConvMaxPool`` is ``Conv`` (stride 1, with bias) followed by a non-overlapping max pool, with
``Conv``'s parameters (names, shapes, initialisers), computing with
``jaxvision.ops.pooling.conv_max_pool`` and adding the bias after the pool.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision import ops

Conv = functools.partial(nn.Conv, conv_general_dilated=ops.conv_general_dilated)


class ConvTranspose(nn.Module):
  """Transposed convolution: ``[B, *S, C_in] -> [B, *S', features]`` (channels last).

  Attributes:
    features: output channels.
    kernel_size: window size, one int per spatial dimension.
    strides: upsampling factors (default 1).
    padding: 'SAME' (output size ``S * strides``), 'VALID' or explicit ``(lo, hi)`` pairs,
      as ``lax.conv_transpose``.
    use_bias: add a learned bias.
    dtype: computation dtype (default: from the input and parameters).
    param_dtype: parameter dtype.
    kernel_init, bias_init: initialisers (Flax's defaults).
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] | None = None
  padding: Any = "SAME"
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.linear.default_kernel_init
  bias_init: Any = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel_size = tuple(self.kernel_size)
    n = len(kernel_size)
    if x.ndim != n + 2:
      raise ValueError(f"ConvTranspose with a {n}-d kernel expects inputs [B, *{n} spatial, C]; "
                       f"found shape {x.shape}")
    strides = tuple(self.strides) if self.strides is not None else (1,) * n
    kernel = self.param("kernel", self.kernel_init, kernel_size + (x.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = ops.conv_transpose(x, kernel, strides, self.padding)
    return y if bias is None else y + bias


class ConvMaxPool(nn.Module):
  """``max_pool(Conv(features, kernel_size, padding)(x), window_shape, strides=window_shape)``.

  ``[B, H, W, C_in] -> [B, Hc // ph, Wc // pw, features]`` (``Hc x Wc``: the convolution's
  output size; the pool floors). Parameters are exactly ``Conv``'s (``kernel [kh, kw, C_in,
  features]``, ``bias [features]``, same initialisers, created in the same order), so a
  module named like the ``Conv`` it replaces initialises and restores the same values. The
  bias is added to the pooled map: a per-channel constant commutes with the maximum, so
  values and gradients are those of the unfused layers, with 4x fewer elements to add (for
  2x2 windows). The convolution and pool share one gradient (``ops.pooling.conv_max_pool``).

  Attributes:
    features: output channels.
    kernel_size: ``(kh, kw)``.
    padding: 'SAME', 'VALID' or explicit ``(lo, hi)`` pairs (at most ``k - 1`` per side).
    window_shape: pooling window, also its stride.
    dtype: computation dtype (default: from the input and parameters).
    param_dtype: parameter dtype.
    kernel_init, bias_init: initialisers (Flax's defaults, as ``Conv``).
  """
  features: int
  kernel_size: Sequence[int]
  padding: Any = "VALID"
  window_shape: Sequence[int] = (2, 2)
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.linear.default_kernel_init
  bias_init: Any = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"ConvMaxPool expects inputs [B, H, W, C]; found shape {x.shape}")
    kernel = self.param("kernel", self.kernel_init,
                        (*self.kernel_size, x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return ops.conv_max_pool(x, kernel, self.padding, self.window_shape) + bias
