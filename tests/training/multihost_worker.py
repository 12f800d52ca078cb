"""One process of a 2-process CPU run, started by path by test_multihost.py (not imported).

Usage: python tests/training/multihost_worker.py PROCESS_ID PORT OUT.npz   (PYTHONPATH=<repo>)

Sets 4 CPU devices, joins the run at 127.0.0.1:PORT, trains with ``tests.support
.train_digits_cnn`` and writes the params as ``flat_leaves`` to OUT.npz.
"""

import os
import sys


def main():
  pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
  # Before JAX is imported (tests.support imports jaxvision.data, which imports JAX).
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  import numpy as np

  from tests import support

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                             process_id=pid)
  assert jax.process_count() == 2 and jax.device_count() == 8, jax.devices()
  np.savez(out, **support.flat_leaves(support.train_digits_cnn()))
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
