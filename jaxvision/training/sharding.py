"""Device mesh and batch placement.

Data parallelism over a 1-D mesh with axis ``'data'``: batches are sharded along their first
axis, the train state is replicated. Host-local batches become global arrays through
``jax.make_array_from_process_local_data``, so the same code runs on one CPU, one GPU, or many
hosts (after ``jax.distributed.initialize()``).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D ``'data'`` mesh over the first ``num_devices`` devices (default: all)."""
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(
          f"num_devices must be between 1 and the {len(devices)} available devices; "
          f"found {num_devices}")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding that places a full copy on every device of ``mesh``."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding that splits the leading (batch) axis over ``'data'``."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh, what: str = "batch_size"):
  """Raises a clear error unless ``global_batch_size`` splits evenly over mesh and hosts."""
  n = mesh.devices.size
  if global_batch_size % n:
    raise ValueError(
        f"{what}={global_batch_size} must be divisible by the {n} devices of the mesh")
  if global_batch_size % jax.process_count():
    raise ValueError(
        f"{what}={global_batch_size} must be divisible by the {jax.process_count()} processes")


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Turns a host-local batch of NumPy arrays into global arrays sharded over ``'data'``.

  Every leaf must have this process's share of the global batch as its leading axis.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
