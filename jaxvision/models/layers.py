"""Layers shared by the models: the one door from models to convolution and pooling.

Every convolution and pooling op of the models goes through this module. Each dispatches
when it is traced: inside ``jaxvision.backends.cpu.enabled()`` (as ``jaxvision.training.jit``
traces the library's steps on CPU) it uses the CPU backend's formulation, anywhere else (a
user's own ``jax.jit(model.apply)``, ``jax.export``) the portable op. Parameters (names,
shapes, initialisers) are the same either way, and values are equal up to float summation
order.

* ``Conv``: ``flax.linen.Conv`` computing with :func:`conv_general_dilated`; the backend form
  writes its gradients as channels-last convolutions (fast inside ``lax.scan`` on XLA:CPU),
  strided input gradients in sub-pixel form, and 2-D float32 convolutions on oneDNN where
  enabled. Portable form: ``lax.conv_general_dilated``.
* ``ConvTranspose``: ``flax.linen.ConvTranspose`` (``transpose_kernel=False``); backend form
  in sub-pixel form, portable form ``lax.conv_transpose``.
* ``ConvMaxPool``: ``Conv`` (stride 1, with bias) followed by a non-overlapping max pool, with
  ``Conv``'s parameters; backend form one fused op with the bias added after the pool,
  portable form convolution, ``flax.linen.max_pool``, bias (exact: a per-channel constant
  commutes with the maximum).
* :func:`max_pool` (portable: ``flax.linen.max_pool``), :func:`global_average_pool`
  (portable: ``jnp.mean``), :func:`check_image_batch`.

See ``docs/cpu_backend.md`` for the backend's formulations.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxvision.backends import cpu


def check_image_batch(x, name: str):
  """Raises a ValueError naming ``name`` unless ``x`` is ``[batch, height, width, channels]``."""
  if x.ndim != 4:
    raise ValueError(
        f"{name} expects images of shape [batch, height, width, channels]; "
        f"found an array of shape {tuple(x.shape)}")


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding, lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None) -> jax.Array:
  """``lax.conv_general_dilated`` (same arguments and result), in the backend's form when
  traced inside ``backends.cpu.enabled()``."""
  conv = cpu.conv.conv_general_dilated if cpu.active() else lax.conv_general_dilated
  return conv(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
              rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
              feature_group_count=feature_group_count, batch_group_count=batch_group_count,
              precision=precision, preferred_element_type=preferred_element_type)


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


def _conv_transpose(x: jax.Array, kernel: jax.Array, strides, padding) -> jax.Array:
  """``lax.conv_transpose`` of ``x [B, *S, C_in]`` with ``kernel [*K, C_in, C_out]``."""
  if cpu.active():
    return cpu.conv.conv_transpose(x, kernel, strides, padding)
  spatial = "DHW"[-(x.ndim - 2):]
  dims = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
  return lax.conv_transpose(x, kernel, strides, padding, dimension_numbers=dims)


def max_pool(x: jax.Array, window_shape: Sequence[int], strides: Sequence[int] | None = None,
             padding: str | Sequence[tuple[int, int]] = "VALID") -> jax.Array:
  """2-D max pooling of ``x [B, H, W, C]``: ``flax.linen.max_pool``'s values and gradients.

  ``padding``: ``'VALID'``, ``'SAME'`` or ``((top, bottom), (left, right))``. Returns
  ``[B, H', W', C]`` with ``H' = (H + top + bottom - window) // stride + 1``. The backend form
  (``backends.cpu.pooling.max_pool``) supports reverse-mode differentiation only.
  """
  check_image_batch(x, "max_pool")
  if cpu.active():
    return cpu.pooling.max_pool(x, window_shape, strides, padding)
  strides = None if strides is None else tuple(strides)
  return nn.max_pool(x, tuple(window_shape), strides=strides, padding=padding)


def global_average_pool(x: jax.Array) -> jax.Array:
  """Mean of ``x [B, *S, C]`` over its spatial axes ``S``: ``[B, C]`` (``jnp.mean``'s dtype).

  The backend form is a matrix-vector product on CPU (``backends.cpu.pooling``).
  """
  if cpu.active():
    return cpu.pooling.global_average_pool(x)
  if x.ndim < 3 or 0 in x.shape[1:-1]:
    raise ValueError(f"global_average_pool expects [batch, *spatial, channels] with non-empty "
                     f"spatial axes; found shape {x.shape}")
  return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))


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
    y = _conv_transpose(x, kernel, strides, self.padding)
    return y if bias is None else y + bias


class ConvMaxPool(nn.Module):
  """``max_pool(Conv(features, kernel_size, padding)(x), window_shape, strides=window_shape)``.

  ``[B, H, W, C_in] -> [B, Hc // ph, Wc // pw, features]`` (``Hc x Wc``: the convolution's
  output size; the pool floors). Parameters are exactly ``Conv``'s (``kernel [kh, kw, C_in,
  features]``, ``bias [features]``, same initialisers, created in the same order), so a
  module named like the ``Conv`` it replaces initialises and restores the same values. The
  bias is added to the pooled map: a per-channel constant commutes with the maximum, so
  values and gradients are those of the unfused layers, with 4x fewer elements to add (for
  2x2 windows). In the backend form the convolution and pool share one gradient
  (``backends.cpu.pooling.conv_max_pool``); the portable form is ``lax.conv_general_dilated``
  then ``flax.linen.max_pool``.

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
    window = tuple(self.window_shape)
    if cpu.active():
      return cpu.pooling.conv_max_pool(x, kernel, self.padding, window) + bias
    y = lax.conv_general_dilated(x, kernel, (1, 1), self.padding,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return nn.max_pool(y, window, strides=window) + bias
