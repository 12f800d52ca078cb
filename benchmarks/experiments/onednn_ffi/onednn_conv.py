"""Experiment (not used by the library): ``ops.conv_general_dilated`` on oneDNN through XLA FFI.

``install()`` replaces the forward pass and both gradients of ``jaxvision.ops.conv`` for
float32 NHWC/HWIO operands with the oneDNN handlers in ``conv.cc`` (built as
``libjvconv.so``, see README.md). Call it before the step is traced. Figures:
``benchmarks/RESULTS.md``.
"""

import ctypes
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.ops import conv as conv_lib

_LIB = ctypes.cdll.LoadLibrary(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                            "libjvconv.so"))
for _name in ("JvConvFwd", "JvConvBwdData", "JvConvBwdWeights"):
  jax.ffi.register_ffi_target(_name, jax.ffi.pycapsule(getattr(_LIB, _name)), platform="cpu")


def _attrs(strides, padding):
  return dict(strides=np.asarray(strides, np.int64),
              pad_lo=np.asarray([p[0] for p in padding], np.int64),
              pad_hi=np.asarray([p[1] for p in padding], np.int64))


def forward(x, w, strides, padding):
  """``[B, H, W, Ci] * [kh, kw, Ci, Co] -> [B, Ho, Wo, Co]``."""
  (b, h, wd, _), (kh, kw, _, co) = x.shape, w.shape
  ho = (h + sum(padding[0]) - kh) // strides[0] + 1
  wo = (wd + sum(padding[1]) - kw) // strides[1] + 1
  out = jax.ShapeDtypeStruct((b, ho, wo, co), x.dtype)
  return jax.ffi.ffi_call("JvConvFwd", out)(x, w, **_attrs(strides, padding))


def backward_data(dy, w, in_size, strides, padding):
  out = jax.ShapeDtypeStruct((dy.shape[0], *in_size, w.shape[2]), dy.dtype)
  return jax.ffi.ffi_call("JvConvBwdData", out)(dy, w, **_attrs(strides, padding))


def backward_weights(x, dy, window, strides, padding):
  out = jax.ShapeDtypeStruct((*window, x.shape[3], dy.shape[3]), x.dtype)
  return jax.ffi.ffi_call("JvConvBwdWeights", out)(x, dy, **_attrs(strides, padding))


def _handled(x, w):
  return x.ndim == 4 and x.dtype == jnp.float32 and w.dtype == jnp.float32


def install():
  """Routes ``jaxvision.ops.conv``'s 2-D float32 convolutions to oneDNN (monkeypatch)."""
  xla_forward = conv_lib._forward

  def _forward(lhs, rhs, strides, padding, precision, preferred_element_type):
    if _handled(lhs, rhs) and preferred_element_type is None:
      return forward(lhs, rhs, strides, padding)
    return xla_forward(lhs, rhs, strides, padding, precision, preferred_element_type)

  def _conv_bwd(strides, padding, precision, preferred_element_type, residuals, g):
    lhs, rhs = residuals
    g = g.astype(lhs.dtype)
    if _handled(lhs, rhs):
      return (backward_data(g, rhs, lhs.shape[1:3], strides, padding),
              backward_weights(lhs, g, rhs.shape[:2], strides, padding))
    dx = conv_lib.input_gradient(g, rhs, lhs.shape[1:-1], strides, padding, precision)
    dw = conv_lib.kernel_gradient(lhs, jnp.moveaxis(g, 0, -2), rhs.shape[:-2], strides,
                                  padding, precision)
    return dx, dw

  conv_lib._forward = _forward
  conv_lib._conv.defvjp(conv_lib._conv_fwd, _conv_bwd)
