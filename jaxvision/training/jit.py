"""The one place where the library's steps are jitted: sharding, donation and the CPU backend.

:func:`jit_step` is ``jax.jit`` plus two things for a step compiled over a mesh on CPU: the
step is traced inside ``jaxvision.backends.cpu.enabled(...)``, so its models use the CPU
backend's formulations (``jaxvision.models.layers``), with oneDNN's convolutions where
``backends.cpu.use_onednn`` allows them (a one-device CPU mesh in a single process); and the
platform's compiler options (``backends.cpu.compiler_options``) are passed to the compiler.
On other platforms the step is traced as written.

:func:`jit_train_step` and :func:`jit_eval_step` fix the shardings of the ``(state, batch)``
steps: the batch sharded over the mesh's ``'data'`` axis, the state replicated (and donated
by the train step).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax

from jaxvision.backends import cpu
from jaxvision.training.sharding import batch_sharding, replicated


def _on_cpu(mesh) -> bool:
  device = jax.devices()[0] if mesh is None else mesh.devices.flat[0]
  return device.platform == "cpu"


def jit_step(fn: Callable, mesh, *, in_shardings: Any = None, out_shardings: Any = None,
             donate_argnums: int | Sequence[int] = (), static_argnums: int | Sequence[int] = (),
             onednn: bool = True):
  """``jax.jit(fn, ...)`` for a step compiled over ``mesh``, with the CPU backend on CPU.

  Args:
    fn: the step (a pure function).
    mesh: the ``jax.sharding.Mesh`` it runs on, or None for JAX's default device.
    in_shardings, out_shardings: as ``jax.jit`` (None: not given to ``jax.jit``).
    donate_argnums, static_argnums: as ``jax.jit``.
    onednn: allow oneDNN's convolutions (still subject to ``backends.cpu.use_onednn``: never
      on a multi-device mesh or in a multi-process run). Pass False for steps measured
      slower with them (the GAN step and sampler) and for steps to be exported.

  Returns:
    The jitted function. The backend choice is made when it is traced.
  """
  if _on_cpu(mesh):
    step = fn

    @functools.wraps(step)
    def fn(*args, **kwargs):
      with cpu.enabled(onednn=cpu.use_onednn(mesh, requested=onednn)):
        return step(*args, **kwargs)

  kwargs = {}
  if in_shardings is not None:
    kwargs["in_shardings"] = in_shardings
  if out_shardings is not None:
    kwargs["out_shardings"] = out_shardings
  return jax.jit(fn, donate_argnums=donate_argnums, static_argnums=static_argnums,
                 compiler_options=cpu.compiler_options(mesh), **kwargs)


def jit_train_step(train_step: Callable, mesh, *, onednn: bool = True):
  """``train_step(state, batch) -> (state, metrics)`` jitted over ``mesh``.

  The batch is sharded over ``'data'``, the state replicated and donated, the outputs
  replicated. ``onednn``: as :func:`jit_step`.
  """
  return jit_step(train_step, mesh, in_shardings=(replicated(mesh), batch_sharding(mesh)),
                  out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=(0,),
                  onednn=onednn)


def jit_eval_step(eval_step: Callable, mesh, *, onednn: bool = True):
  """``eval_step(state, batch) -> outputs`` (an eval or predict step) jitted over ``mesh``.

  The batch is sharded over ``'data'``, the state and outputs replicated; nothing donated.
  ``onednn``: as :func:`jit_step`.
  """
  return jit_step(eval_step, mesh, in_shardings=(replicated(mesh), batch_sharding(mesh)),
                  out_shardings=replicated(mesh), onednn=onednn)
