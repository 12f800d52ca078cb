"""One process of a 2-process CPU run (see test_multihost.py); also callable in-process.

Usage: python multihost_worker.py PROCESS_ID PORT OUT.npz
"""

import os
import sys


def run(num_steps: int = 4):
  """Trains SimpleCNN on digits for ``num_steps`` over all devices; returns host params."""
  import jax
  import ml_collections

  from jaxvision import data, models
  from jaxvision.training import jit, optim, sharding, state as state_lib, steps

  builder, info = data.get_dataset("digits")
  mesh = sharding.make_mesh()
  it = data.make_train_iterator(builder, info, split="train", global_batch_size=32,
                                pp="resize(16)|random_crop(16, pad=1)|value_range(0, 1)", seed=3)
  tx, _ = optim.make_optimizer(ml_collections.ConfigDict(
      {"name": "sgd", "learning_rate": 0.05, "schedule": "constant"}), num_steps)
  state = state_lib.create_train_state(models.SimpleCNN(num_classes=10, dropout_rate=0.2), tx,
                                       input_shape=(16, 16, 1), rng=jax.random.PRNGKey(0),
                                       mesh=mesh)
  step = jit.jit_train_step(steps.make_train_step(), mesh)
  for _ in range(num_steps):
    state, _ = step(state, sharding.shard_batch(next(it), mesh))
  return jax.device_get(state.params)


def main():
  pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  import numpy as np
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                             process_id=pid)
  assert jax.process_count() == 2 and jax.device_count() == 8, jax.devices()
  params = run()
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(params)}
  np.savez(out, **flat)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
