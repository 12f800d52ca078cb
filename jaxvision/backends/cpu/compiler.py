"""XLA compiler options that the library's compiled steps use, per platform.

``compiler_options(mesh)`` is passed as ``compiler_options`` to the ``jax.jit`` of the
train/eval/predict steps (see ``jaxvision.training.jit``). Options are per compilation, so
they change nothing else in the process (other jitted code, TensorFlow's XLA), work whatever
the import order, and need no environment variable set before JAX starts.

On CPU (XLA:CPU in jaxlib 0.10):

* ``xla_cpu_experimental_ynn_fusion_type``: XLA offloads dots, convolutions and reductions to
  YNNPACK by default. Its convolutions are slower than XLA's own (Eigen) convolutions for the
  shapes of CNN training steps, the weight gradient most of all (see
  ``benchmarks/RESULTS.md``), so the library keeps YNNPACK for dots and reductions only.
  Results are unchanged up to float summation order.

An option is left out when the user sets it in ``XLA_FLAGS`` (the user's value wins) or
when this jaxlib does not know it (checked once by compiling a trivial function), and
``JAXVISION_XLA_DEFAULTS=0`` turns all of them off (and the host defaults of
``backends.cpu.runtime``).
"""

from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp

from jaxvision.backends.cpu import runtime

CPU_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}


def _user_flags() -> str:
  return os.environ.get("XLA_FLAGS", "")


@functools.lru_cache(maxsize=None)
def _supported(platform: str, name: str, value: str) -> bool:
  """Whether this jaxlib accepts ``name=value`` when compiling for ``platform``."""
  try:
    device = jax.devices(platform)[0]
    fn = jax.jit(lambda x: x + 1, compiler_options={name: value})
    fn.lower(jax.ShapeDtypeStruct((2,), jnp.float32,
                                  sharding=jax.sharding.SingleDeviceSharding(device))).compile()
    return True
  except Exception as e:  # Unknown option or value in this jaxlib: skip it.
    logging.getLogger(__name__).info("XLA option %s=%s not used: %s", name, value, e)
    return False


def compiler_options(mesh=None) -> dict | None:
  """``compiler_options`` for steps compiled over ``mesh`` (None when there are none).

  ``mesh``: a ``jax.sharding.Mesh``, or None for JAX's default device.
  """
  if not runtime.defaults_enabled():
    return None
  platform = (jax.devices()[0] if mesh is None else mesh.devices.flat[0]).platform
  defaults = CPU_OPTIONS if platform == "cpu" else {}
  user = _user_flags()
  options = {k: v for k, v in defaults.items()
             if f"--{k}" not in user and _supported(platform, k, v)}
  return options or None
