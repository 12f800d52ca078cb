"""Train state: params, BatchNorm statistics, optimizer state, step and rng in one pytree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax.training import train_state

from jaxvision.training import optim
from jaxvision.training.sharding import replicated


class TrainState(train_state.TrainState):
  """``flax.training.train_state.TrainState`` plus ``batch_stats`` and a base ``rng``.

  ``rng`` is a raw ``uint32[2]`` key; the step's randomness is ``fold_in(rng, step)``, so a run
  resumed from a checkpoint draws exactly what an uninterrupted run draws.
  """
  batch_stats: Any = None
  rng: jax.Array | None = None


def create_train_state(model, tx, *, input_shape, rng, mesh=None, dtype=None,
                       abstract: bool = False) -> TrainState:
  """Initializes a replicated :class:`TrainState` for ``model``.

  Args:
    model: a classifier following the ``(logits, out) = model(x, train=...)`` contract.
    tx: Optax transformation.
    input_shape: one example's shape ``(H, W, C)``.
    rng: ``jax.random.PRNGKey``; split into the init key and the state's base key.
    mesh: if given, the state is created directly replicated on it (``jit`` with
      ``out_shardings``), never materialized on one device first.
  """
  init_rng, state_rng = jax.random.split(rng)
  dummy = jnp.zeros((1, *input_shape), dtype or jnp.float32)

  def init():
    variables = model.init({"params": init_rng, "dropout": init_rng}, dummy, train=False)
    return TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx,
        batch_stats=variables.get("batch_stats", {}), rng=state_rng)

  out_sharding = None if mesh is None else replicated(mesh)
  if abstract:
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=out_sharding),
                        jax.eval_shape(init))
  return jax.jit(init, out_shardings=out_sharding)()


def load_matching(target, source) -> tuple[Any, list[str], list[str]]:
  """``target`` (a params or batch_stats tree) with every leaf taken from ``source`` where
  ``source`` has a leaf of the same path and shape.

  Returns:
    ``(tree, loaded, not_loaded)``: the merged tree (leaves keep ``target``'s dtype and
    placement) and the ``'/'``-joined paths that were and were not taken from ``source``
    (a new head, or layers whose shapes differ, are ``not_loaded``).
  """
  flat_source = {optim.path_name(p): v for p, v in jax.tree_util.tree_leaves_with_path(source)}
  loaded, not_loaded = [], []

  def take(path, leaf):
    name = optim.path_name(path)
    value = flat_source.get(name)
    if value is None or tuple(value.shape) != tuple(leaf.shape):
      not_loaded.append(name)
      return leaf
    loaded.append(name)
    return jax.device_put(jnp.asarray(value, leaf.dtype), leaf.sharding)

  return jax.tree_util.tree_map_with_path(take, target), loaded, not_loaded
