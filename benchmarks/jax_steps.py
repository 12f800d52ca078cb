"""Runners that time the library's own compiled steps (the trainer's default path).

The train step is ``jit.jit_train_step(steps.make_train_step(), mesh)``, lowered and compiled
ahead of time exactly as ``train/classification.py`` does, with the state created by
``state.create_train_state`` and the optimizer by ``optim.make_optimizer``. The eval step is
``jit.jit_eval_step(steps.make_eval_step(K), mesh)`` and the predict step
``jit.jit_eval_step(steps.predict_step, mesh)``. Batches are random tensors of the right
shapes placed on the mesh once (the figures are throughput, not accuracy).
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from benchmarks import timing
from benchmarks.specs import ModelSpec
from jaxvision.tasks import classification as steps
from jaxvision.training import jit, optim, sharding, state as state_lib

STEP_KINDS = ("train", "eval", "predict")


def random_batch(spec: ModelSpec, batch: int, seed: int = 0) -> dict:
  """``{'image': float32 [B, H, W, C], 'label': int32 [B], 'mask': bool [B]}`` (NumPy)."""
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(batch, *spec.input_shape)).astype(np.float32),
          "label": rng.integers(0, spec.num_classes, batch).astype(np.int32),
          "mask": np.ones((batch,), bool)}


def initial_state(spec: ModelSpec, mesh):
  """The train state the trainer would start from (``create_train_state``), on ``mesh``."""
  tx, _ = optim.make_optimizer(ml_collections.ConfigDict(spec.optimizer), total_steps=10_000)
  return state_lib.create_train_state(spec.make_jax(), tx, input_shape=spec.input_shape,
                                      rng=jax.random.PRNGKey(0), mesh=mesh)


class JaxStepRunner:
  """Compiles one step kind of one model and times ``k`` consecutive calls.

  ``state`` (optional) is the initial train state, which the train step donates: give each
  runner its own. ``setup()`` returns the compile seconds and XLA's analysis; ``run(k)``
  returns the seconds for ``k`` calls ending in ``block_until_ready`` (the train state is
  threaded through, as in training).
  """
  framework = "jax"

  def __init__(self, spec: ModelSpec, step: str, batch: int, mesh, host_batch: dict,
               state=None):
    if step not in STEP_KINDS:
      raise ValueError(f"step must be one of {STEP_KINDS}; found {step!r}")
    sharding.check_batch_size(batch, mesh)
    self.spec, self.step, self.batch, self.mesh = spec, step, batch, mesh
    self._host_batch = host_batch
    self.state = state

  def _step_fn(self):
    """A freshly made jitted step (a new function, so it is traced again)."""
    if self.step == "train":
      return jit.jit_train_step(steps.make_train_step(), self.mesh)
    if self.step == "eval":
      return jit.jit_eval_step(steps.make_eval_step(self.spec.num_classes), self.mesh)
    return jit.jit_eval_step(steps.predict_step, self.mesh)

  def setup(self) -> dict:
    spec, mesh = self.spec, self.mesh
    if self.state is None:
      self.state = initial_state(spec, mesh)
    if self.step == "train":
      self.args = sharding.shard_batch(
          {k: self._host_batch[k] for k in ("image", "label")}, mesh)
    elif self.step == "eval":
      self.args = sharding.shard_batch(self._host_batch, mesh)
    else:
      self.args = sharding.shard_batch({"image": self._host_batch["image"]}, mesh)["image"]
    lowered = self._step_fn().lower(self.state, self.args)
    compile_s, self.compiled = timing.time_call(lowered.compile)
    for _ in range(2):  # Warm-up: first calls allocate and fault in buffers.
      self.run(1)
    flops = timing.xla_cost_flops(
        self.compiled, lambda: self._step_fn().lower(self.state, self.args))
    return {"compile_s": compile_s, "flops_per_step": flops,
            "compiled_memory_bytes": timing.compiled_memory(self.compiled)}

  def _call(self):
    if self.step == "train":
      self.state, out = self.compiled(self.state, self.args)
    else:
      out = self.compiled(self.state, self.args)
    return out

  def run(self, k: int) -> float:
    def go():
      out = None
      for _ in range(k):
        out = self._call()
      jax.block_until_ready((self.state, out))
    seconds, _ = timing.time_call(go)
    return seconds

  def memory(self) -> dict | None:
    return timing.device_memory(self.mesh.devices.flat[0])
