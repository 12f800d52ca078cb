"""TEMPORARY shim until the backend branch lands (replaced by its training/jit.py)."""
import jax

from jaxvision.ops import onednn
from jaxvision.training.compiler import step_compiler_options
from jaxvision.training.sharding import batch_sharding, replicated


def _traced(step, mesh, use):
  return step if (mesh.devices.size == 1 and use) else onednn.with_xla_convolutions(step)


def jit_train_step(step, mesh, *, onednn=True):
  return jax.jit(_traced(step, mesh, onednn),
                 in_shardings=(replicated(mesh), batch_sharding(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=(0,),
                 compiler_options=step_compiler_options(mesh))


def jit_eval_step(step, mesh, *, onednn=True):
  return jax.jit(_traced(step, mesh, onednn),
                 in_shardings=(replicated(mesh), batch_sharding(mesh)),
                 out_shardings=replicated(mesh), compiler_options=step_compiler_options(mesh))
