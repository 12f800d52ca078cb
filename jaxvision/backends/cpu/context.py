"""When the CPU backend's formulations are traced: a thread-local context, decided per trace.

The backend is opt-in. A function traced inside :func:`enabled` (on a process whose default
backend is CPU) gets the formulations of ``backends.cpu.conv`` and ``backends.cpu.pooling``
from ``jaxvision.models.layers``; a function traced anywhere else (a user's own
``jax.jit(model.apply)``, ``jax.export``) gets portable ops (``lax.conv_general_dilated``,
``flax.linen.max_pool``, ``jnp.mean``). The decision is part of the trace: a function jitted
while the context was open keeps its form when it is called later.

Whether oneDNN's convolutions (``backends.cpu.onednn``) are used inside the context is decided
by one rule, :func:`use_onednn`: asked for, not switched off by ``JAXVISION_ONEDNN=0``, a
single process, a mesh of one CPU device, and not for an export. XLA's SPMD partitioner cannot
split a custom call: on a mesh of several devices it would gather the sharded operands onto
every device (correct, but each device then does the whole batch's work), and an exported
program must not depend on a library built on this machine.
"""

from __future__ import annotations

import contextlib
import threading

import jax

from jaxvision.backends.cpu import onednn as onednn_lib

_state = threading.local()


@contextlib.contextmanager
def enabled(onednn: bool = True):
  """Within this block (this thread), traces use the CPU backend's formulations.

  Args:
    onednn: also run 2-D float32 convolutions on oneDNN where it is available (pass the
      result of :func:`use_onednn` to apply the library's rule for meshes and exports).

  Only traces made inside the block are affected. Blocks nest; an inner block cannot turn
  oneDNN back on once an outer one turned it off (so ``enabled(onednn=False)`` around a step
  jitted by ``training.jit`` traces it with XLA's convolutions, e.g. to count its FLOPs).
  """
  previous = getattr(_state, "config", None)
  outer = True if previous is None else previous["onednn"]
  _state.config = {"onednn": bool(onednn) and outer}
  try:
    yield
  finally:
    _state.config = previous


def active() -> bool:
  """Whether a function traced now gets the backend's formulations.

  True inside :func:`enabled` when JAX's default backend is CPU.
  """
  return getattr(_state, "config", None) is not None and jax.default_backend() == "cpu"


def onednn_active() -> bool:
  """Whether a 2-D float32 convolution traced now runs on oneDNN.

  :func:`active`, with oneDNN asked for by the open :func:`enabled` block, allowed by
  :func:`use_onednn` for this process, and built and registered (``onednn.available``; the
  first call builds it).
  """
  if not active() or not _state.config["onednn"]:
    return False
  return use_onednn(None, requested=True) and onednn_lib.available()


def use_onednn(mesh, *, requested: bool, export: bool = False) -> bool:
  """The rule for oneDNN's custom calls: whether a step over ``mesh`` may use them.

  Args:
    mesh: the ``jax.sharding.Mesh`` the step is compiled over, or None for the default
      device.
    requested: whether the caller asks for oneDNN (steps measured slower with it pass False).
    export: whether the program is traced for ``jax.export`` (a serialized program must not
      call a library built on this machine).

  Returns:
    False for an export, a mesh of several devices (XLA cannot partition a custom call), a
    multi-process run, a non-CPU platform, or ``JAXVISION_ONEDNN=0``; otherwise
    ``requested``.
  """
  if not requested or export or not onednn_lib.enabled_by_env():
    return False
  if jax.process_count() != 1:
    return False
  if mesh is None:
    return jax.default_backend() == "cpu"
  return mesh.devices.size == 1 and mesh.devices.flat[0].platform == "cpu"
