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
