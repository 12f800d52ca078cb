"""jaxvision.training: the task protocol and the one trainer, train state, optimizers, meshes,
checkpoints and step compilation (task-agnostic: the tasks live in ``jaxvision.tasks``).

Importing it changes no process-wide state. A program training on CPU applies the library's
runtime defaults explicitly, before any JAX computation:
``jaxvision.backends.cpu.configure_runtime()``.
"""

from jaxvision.training.checkpoint import CheckpointMismatchError, Checkpointer
from jaxvision.training.jit import jit_eval_step, jit_step, jit_train_step
from jaxvision.training.optim import make_optimizer, make_schedule
from jaxvision.training.sharding import make_mesh, shard_batch
from jaxvision.training.state import TrainState, create_train_state
from jaxvision.training.task import Evaluator, Hook, Task
from jaxvision.training.trainer import DivergenceError, load_config, restore, train

__all__ = [
    "CheckpointMismatchError",
    "Checkpointer",
    "DivergenceError",
    "Evaluator",
    "Hook",
    "Task",
    "TrainState",
    "create_train_state",
    "jit_eval_step",
    "jit_step",
    "jit_train_step",
    "load_config",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "restore",
    "shard_batch",
    "train",
]
