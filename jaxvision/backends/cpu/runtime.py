"""Host defaults for XLA:CPU, applied by an explicit call: :func:`configure_runtime`.

Importing jaxvision changes no process-wide state. A program that trains on CPU (``train/main.py``,
the benchmarks, or a library user's own script) calls, first thing, before any JAX computation::

    import jaxvision.backends.cpu
    jaxvision.backends.cpu.configure_runtime()

XLA:CPU takes each call's temporary buffers (about a gigabyte for a ResNet-18 CIFAR train step
at batch 128) from ``malloc`` and frees them when the call ends. glibc serves blocks that large
with ``mmap`` and gives them back with ``munmap``, so every step page-faults its whole
working set in again, a large share of a step's time in the kernel (``benchmarks/RESULTS.md``).
TensorFlow keeps its own buffers and does not pay this. Two settings stop it:

* ``jax_cpu_enable_async_dispatch=False``: single-device computations run on the thread that
  calls them, so their buffers come from glibc's main arena. With asynchronous dispatch they
  run on a worker thread whose arena is capped at 64 MB, where large blocks are always
  mapped and unmapped. It must be set before JAX creates its CPU client, which is why
  :func:`configure_runtime` must run before the first JAX computation.
* ``mallopt(M_MMAP_THRESHOLD)`` and ``mallopt(M_TRIM_THRESHOLD)`` at their maximum: the
  main arena serves large blocks from the heap and keeps freed memory for the next call
  instead of returning it to the kernel. The process's resident size then stays at its peak
  (it does not grow step after step; the next call reuses the same blocks).

Neither changes any computed value. Nothing is changed where JAX's backends were already
created before the call (the dispatch mode can no longer change, so the malloc settings
would not help either); the malloc settings are left as they are off Linux/glibc and where
the user set them (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or the matching
``GLIBC_TUNABLES``). ``JAXVISION_XLA_DEFAULTS=0`` turns off these and the compiler options of
``backends.cpu.compiler`` alike; ``jax.config.update("jax_cpu_enable_async_dispatch", True)``
after the call and before the first computation restores asynchronous dispatch alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

import jax

ENV_SWITCH = "JAXVISION_XLA_DEFAULTS"

# glibc's mallopt parameters (malloc.h) and the ways a user sets them before start-up.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MALLOC_PARAMS = {
    "mmap_threshold": (_M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_"),
    "trim_threshold": (_M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_"),
}

_ASYNC_DISPATCH = "jax_cpu_enable_async_dispatch"
_applied: dict | None = None


def defaults_enabled() -> bool:
  """False when ``JAXVISION_XLA_DEFAULTS`` is 0/false/no: the library sets nothing."""
  return os.environ.get(ENV_SWITCH, "1").lower() not in ("0", "false", "no")


def _backends_initialized() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except Exception:  # Private API moved: assume the worst and change nothing.
    return True


def _async_dispatch() -> bool | None:
  """JAX's ``jax_cpu_enable_async_dispatch`` (None where this JAX has no such option)."""
  try:
    return bool(jax.config.read(_ASYNC_DISPATCH))
  except AttributeError:
    return None


def _set_malloc_params() -> dict:
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return {}
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  try:
    mallopt = ctypes.CDLL("libc.so.6").mallopt
  except (OSError, AttributeError):
    return {}
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  applied = {}
  for name, (param, env) in _MALLOC_PARAMS.items():
    if env in os.environ or f"glibc.malloc.{name}" in tunables:
      continue
    # -1 is read as SIZE_MAX: never mmap, never trim.
    if mallopt(param, -1) == 1:
      applied[f"malloc_{name}"] = "max"
  return applied


def configure_runtime() -> dict:
  """Applies the defaults above once per process; returns what was set (name -> value).

  Call it before the first JAX computation (JAX's CPU client must not exist yet), e.g. at
  the top of ``main``. Later calls return the first call's result. Safe to call at any time:
  what can no longer take effect is skipped (then it returns ``{}``).
  ``JAXVISION_XLA_DEFAULTS=0`` makes it set nothing.
  """
  global _applied
  if _applied is not None:
    return dict(_applied)
  applied = {}
  if defaults_enabled() and not _backends_initialized():
    if _async_dispatch():
      jax.config.update(_ASYNC_DISPATCH, False)
      applied[_ASYNC_DISPATCH] = False
    if _async_dispatch() is False:
      applied.update(_set_malloc_params())
  if applied:
    logging.getLogger(__name__).info("jaxvision CPU runtime defaults: %s", applied)
  _applied = applied
  return dict(applied)
