"""Fine-tuning settings shared by the tasks that train a classifier-shaped model
(``classification``, ``multilabel``): one reading of the config fields

* ``init_from``: ``'imagenet'`` (the model's pretrained ImageNet weights,
  ``models.pretrained_variables``) or another workdir (its best checkpoint, whatever its
  task, as long as parameter names and shapes match);
* ``head``: a regular expression naming the head's parameters (e.g. ``'^classifier/'``);
* ``freeze_backbone`` (train the head only, the model in inference mode: a linear probe) or
  ``backbone_lr_multiplier`` (the backbone at a scaled learning rate); both need ``head``.

:func:`check_config` fails early (in a task's ``prepare``), :func:`make_optimizer` builds the
optimizer with its parameter groups, :func:`initialize_from` loads the weights into a fresh
train state, and :func:`train_step_options` / :func:`stop_gradient_outside` give a probe's
partial backward pass.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import ml_collections

from jaxvision import models
from jaxvision.training import optim, sharding, trainer
from jaxvision.training import state as state_lib


def variables(state, params=None) -> dict:
  """``{'params', 'batch_stats'?}`` of a train state (``params`` replacing its own)."""
  out = {"params": state.params if params is None else params}
  if state.batch_stats:
    out["batch_stats"] = state.batch_stats
  return out


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails now, before any data, on an ``init_from`` that cannot be loaded (no pretrained
  weights for the model; a workdir without ``config.json``) and on ``freeze_backbone`` or
  ``backbone_lr_multiplier`` without ``head``."""
  if config.get("init_from") == "imagenet":
    models.pretrained.get_spec(config.model.name)
  elif config.get("init_from"):
    trainer.load_config(config.init_from)
  _check_groups(config)


def _check_groups(config: ml_collections.ConfigDict) -> None:
  if not config.get("head") and (config.get("freeze_backbone")
                                 or config.get("backbone_lr_multiplier", 1.0) != 1.0):
    raise ValueError("config.freeze_backbone and config.backbone_lr_multiplier need "
                     "config.head, a regular expression naming the head's parameters "
                     "(e.g. '^Dense_1/')")


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int):
  """``(tx, schedule)``: ``config.optimizer``, with the head/backbone groups when
  ``config.head`` is set (``optim.with_param_groups``)."""
  tx, schedule = optim.make_optimizer(config.optimizer, total_steps)
  if config.get("head"):
    tx = optim.with_param_groups(
        tx, head=config.head, freeze_backbone=config.get("freeze_backbone", False),
        backbone_lr_multiplier=config.get("backbone_lr_multiplier", 1.0))
  else:
    _check_groups(config)
  return tx, schedule


def train_step_options(config: ml_collections.ConfigDict) -> dict:
  """``{'frozen_statistics', 'trainable'}`` for a task's ``make_train_step``: with
  ``freeze_backbone`` the model runs in inference mode and only ``head`` is differentiated."""
  frozen = bool(config.get("freeze_backbone", False))
  return {"frozen_statistics": frozen, "trainable": config.head if frozen else None}


def stop_gradient_outside(params, pattern: re.Pattern | None):
  """``params`` with ``jax.lax.stop_gradient`` on every leaf whose path (``'Dense_1/kernel'``)
  ``pattern`` does not find (no backward pass is computed for them); unchanged when
  ``pattern`` is None."""
  if pattern is None:
    return params
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p if pattern.search(optim.path_name(path)) else jax.lax.stop_gradient(p),
      params)


def source_variables(init_from: str, model_name: str) -> tuple[dict, str]:
  """``(variables, description)`` of ``init_from``: ``'imagenet'`` or a workdir (its best
  checkpoint, restored by the task its ``config.json`` names)."""
  if init_from == "imagenet":
    found, _ = models.pretrained_variables(model_name)
    return found, f"imagenet ({model_name} ImageNet-1k weights)"
  from jaxvision import tasks  # the package imports this module's users lazily too

  config = trainer.load_config(init_from)
  restored = trainer.restore(tasks.create_task(config), init_from, "best")
  meta = restored.meta
  return variables(restored.state), (f"{init_from} (step {restored.step}, {meta['model']} on "
                                     f"{meta['dataset']})")


def create_state(model, tx, example_batch, mesh, config: ml_collections.ConfigDict, *,
                 abstract: bool):
  """``(state, input_shape)``: the train state of an image ``model`` for the classification
  and multi-label tasks, with ``config.init_from``'s weights when set (a restore target,
  ``abstract``, gets them from its checkpoint instead).

  Raises:
    ValueError: ``config.input_shape`` is set and differs from the pipeline's image shape.
  """
  input_shape = tuple(example_batch["image"].shape[1:])
  expected = config.get("input_shape")
  if expected and tuple(expected) != input_shape:
    raise ValueError(
        f"the model is configured for images of shape {tuple(expected)} (config.input_shape) "
        f"but the input pipeline produces {input_shape}; fix config.pp_train/pp_eval "
        f"or config.input_shape")
  state = state_lib.create_train_state(model, tx, input_shape=input_shape,
                                       rng=jax.random.PRNGKey(config.seed), mesh=mesh,
                                       abstract=abstract)
  if config.get("init_from") and not abstract:
    state = initialize_from(state, config, tx, mesh)
  return state, input_shape


def initialize_from(state, config: ml_collections.ConfigDict, tx, mesh):
  """``state`` with the parameters and BatchNorm statistics of ``config.init_from`` wherever
  names and shapes match (a new head, or layers of another size, keep their fresh
  initialisation and are listed in the line printed; fresh parameters matching
  ``config.head`` start at zero, big_vision's head_zeroinit: uniform first predictions and no
  large random-head gradients into the pretrained features); the optimizer state is
  initialised again for the new parameters.

  Raises:
    ValueError: no parameter of the source fits the model.
  """
  source, description = source_variables(config.init_from, config.model.name)
  params, loaded, skipped = state_lib.load_matching(state.params, source["params"])
  if config.get("head"):
    head = re.compile(config.head)

    def zero_fresh_head(path, p):
      name = optim.path_name(path)
      if name in skipped and head.search(name):
        return jax.device_put(jnp.zeros(p.shape, p.dtype), p.sharding)
      return p

    params = jax.tree_util.tree_map_with_path(zero_fresh_head, params)
  stats, _, skipped_stats = state_lib.load_matching(state.batch_stats,
                                                    source.get("batch_stats", {}))
  print(f"init_from {description}: loaded {len(loaded)} of {len(loaded) + len(skipped)} "
        f"parameter arrays" + (f"; freshly initialised: {', '.join(skipped + skipped_stats)}"
                               if skipped or skipped_stats else ""))
  if not loaded:
    raise ValueError(f"config.init_from={config.init_from!r}: no parameter of it fits this "
                     f"{config.model.name!r} model")
  opt_state = jax.jit(tx.init, out_shardings=sharding.replicated(mesh))(params)
  return state.replace(params=params, batch_stats=stats, opt_state=opt_state)
