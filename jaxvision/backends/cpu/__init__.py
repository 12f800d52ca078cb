"""jaxvision.backends.cpu: everything that exists only to make XLA:CPU fast.

* ``conv``: channels-last convolutions whose gradients are explicit forward convolutions
  (fast inside ``lax.scan`` on XLA:CPU), strided input gradients and ``conv_transpose`` in
  sub-pixel form, and a fusion barrier in front of the kernel gradient's layout change.
* ``onednn`` (+ ``onednn_conv.cc``): 2-D float32 convolutions on oneDNN through XLA FFI (the
  optional extra ``jaxvision[onednn]``).
* ``pooling``: max pooling with an argmax workspace for its gradient, a fused convolution +
  max pool, and a global average pool written as a dot.
* ``compiler``: per-step XLA compiler options (:func:`compiler_options`).
* ``runtime``: process-wide host defaults, applied only by an explicit
  :func:`configure_runtime` call before JAX starts.
* ``context``: the opt-in. Formulations are traced only inside :func:`enabled` (and only when
  JAX's default backend is CPU); :func:`use_onednn` is the one rule for where oneDNN's custom
  calls may be used (not for multi-device meshes, multi-process runs or exports).

Reached only through ``jaxvision.models.layers`` (models) and ``jaxvision.training.jit`` (the
step-jitting functions), plus tests and benchmarks. Imports nothing of jaxvision outside
itself. See ``docs/cpu_backend.md``; figures are in ``benchmarks/RESULTS.md``.
"""

from jaxvision.backends.cpu import conv, onednn, pooling
from jaxvision.backends.cpu.compiler import compiler_options
from jaxvision.backends.cpu.context import active, enabled, onednn_active, use_onednn
from jaxvision.backends.cpu.runtime import configure_runtime

__all__ = [
    "active",
    "compiler_options",
    "configure_runtime",
    "conv",
    "enabled",
    "onednn",
    "onednn_active",
    "pooling",
    "use_onednn",
]
