"""Optimizers and learning-rate schedules from an ``ml_collections`` config.

Config fields (``config.optimizer``):

* ``name``: ``'sgd'`` (momentum, optional Nesterov) or ``'adamw'`` (``'adam'`` = AdamW with no
  decay).
* ``learning_rate``: peak learning rate.
* ``schedule``: ``'constant'``, ``'warmup_cosine'`` or ``'onecycle'``.
* ``warmup_steps`` (warmup_cosine), ``pct_start`` (onecycle: fraction of steps rising).
* ``weight_decay``: decoupled for AdamW, added to the gradient for SGD; never applied to biases
  or normalization scales (leaves with fewer than 2 dimensions).
* ``momentum``, ``nesterov`` (SGD); ``b1``, ``b2`` (Adam).
* ``grad_clip_norm``: clip by global norm when > 0.
"""

from __future__ import annotations

import jax
import optax


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
  """Learning-rate schedule for ``total_steps`` steps."""
  lr = cfg.learning_rate
  name = cfg.get("schedule", "constant")
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "warmup_cosine":
    warmup = min(cfg.get("warmup_steps", 0), max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=cfg.get("end_lr_fraction", 0.0) * lr)
  if name == "onecycle":
    return optax.cosine_onecycle_schedule(
        transition_steps=max(total_steps, 1), peak_value=lr,
        pct_start=cfg.get("pct_start", 0.25),
        div_factor=cfg.get("div_factor", 25.0),
        final_div_factor=cfg.get("final_div_factor", 1e4))
  raise ValueError(
      f"unknown schedule {name!r}; expected one of 'constant', 'warmup_cosine', 'onecycle'")


def _decay_mask(params):
  return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns ``(tx, schedule)`` for ``cfg`` (``config.optimizer``)."""
  schedule = make_schedule(cfg, total_steps)
  name = cfg.name
  wd = cfg.get("weight_decay", 0.0)
  parts = []
  if cfg.get("grad_clip_norm", 0.0):
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if name == "sgd":
    if wd:
      parts.append(optax.add_decayed_weights(wd, mask=_decay_mask))
    parts.append(optax.sgd(schedule, momentum=cfg.get("momentum", 0.9) or None,
                           nesterov=cfg.get("nesterov", False)))
  elif name in ("adamw", "adam"):
    parts.append(optax.adamw(schedule, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                             weight_decay=wd if name == "adamw" else 0.0, mask=_decay_mask))
  else:
    raise ValueError(f"unknown optimizer {name!r}; expected 'sgd', 'adam' or 'adamw'")
  return optax.chain(*parts), schedule
