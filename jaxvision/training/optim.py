"""Optimizers and learning-rate schedules from a config, a dict or keyword arguments.

``make_optimizer`` and ``make_schedule`` take the same fields, as an ``ml_collections``
``ConfigDict`` (``config.optimizer``), any ``Mapping``, keyword arguments, or a config plus
keyword arguments that override it::

  tx, schedule = make_optimizer(config.optimizer, total_steps)
  tx, schedule = make_optimizer({"name": "adamw", "learning_rate": 1e-3}, total_steps)
  tx, schedule = make_optimizer(name="sgd", learning_rate=0.1, momentum=0.9)

Fields (``name`` and ``learning_rate`` are required; the others default to :data:`DEFAULTS`):

* ``name``: ``'sgd'`` (momentum, optional Nesterov) or ``'adamw'`` (``'adam'`` = AdamW with no
  decay).
* ``learning_rate``: peak learning rate.
* ``schedule``: ``'constant'``, ``'warmup_cosine'`` or ``'onecycle'``.
* ``warmup_steps``, ``end_lr_fraction`` (warmup_cosine); ``pct_start`` (fraction of steps
  rising), ``div_factor``, ``final_div_factor`` (onecycle).
* ``weight_decay``: decoupled for AdamW, added to the gradient for SGD; never applied to biases
  or normalization scales (leaves with fewer than 2 dimensions).
* ``momentum``, ``nesterov`` (SGD; ``momentum`` 0 or None: plain SGD); ``b1``, ``b2`` (Adam).
* ``grad_clip_norm``: clip by global norm when > 0.

Unknown fields raise ``ValueError`` naming the known ones, so a misspelt field is never
silently ignored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import optax

REQUIRED = ("name", "learning_rate")
DEFAULTS = {
    "schedule": "constant",
    "warmup_steps": 0,
    "end_lr_fraction": 0.0,
    "pct_start": 0.25,
    "div_factor": 25.0,
    "final_div_factor": 1e4,
    "weight_decay": 0.0,
    "momentum": 0.9,
    "nesterov": False,
    "b1": 0.9,
    "b2": 0.999,
    "grad_clip_norm": 0.0,
}
KNOWN_FIELDS = REQUIRED + tuple(DEFAULTS)
SCHEDULES = ("constant", "warmup_cosine", "onecycle")
OPTIMIZERS = ("sgd", "adam", "adamw")

OptimizerConfig = ml_collections.ConfigDict | Mapping[str, Any] | None

# Field -> (lowest, highest, whether the lowest is allowed, whether the highest is allowed):
# the values that make sense (check_config). A None bound is open.
RANGES = {
    "learning_rate": (0.0, None, False, False),
    "warmup_steps": (0, None, True, False),
    "end_lr_fraction": (0.0, 1.0, True, True),
    "pct_start": (0.0, 1.0, False, False),
    "div_factor": (0.0, None, False, False),
    "final_div_factor": (0.0, None, False, False),
    "weight_decay": (0.0, None, True, False),
    "momentum": (0.0, 1.0, True, False),
    "b1": (0.0, 1.0, True, False),
    "b2": (0.0, 1.0, True, False),
    "grad_clip_norm": (0.0, None, True, False),
}


def _range_text(lo, hi, lo_in: bool, hi_in: bool) -> str:
  if hi is None:
    return f"{'>=' if lo_in else '>'} {lo:g}"
  return f"in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"


def check_config(cfg: OptimizerConfig, where: str = "config.optimizer") -> None:
  """Raises a one-line ValueError for an optimizer config that cannot train: an unknown or
  missing field, an unknown ``name`` or ``schedule``, or a value out of its range
  (:data:`RANGES`: e.g. ``learning_rate`` a finite number > 0, ``b1``/``b2``/``momentum`` in
  [0, 1)). ``where`` names the config field in the message (``config.g_optimizer``)."""
  try:
    fields = resolve_config(cfg)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None
  if fields["name"] not in OPTIMIZERS:
    raise ValueError(f"{where}.name must be one of {', '.join(repr(o) for o in OPTIMIZERS)}; "
                     f"found {fields['name']!r}")
  if fields["schedule"] not in SCHEDULES:
    raise ValueError(f"{where}.schedule must be one of "
                     f"{', '.join(repr(s) for s in SCHEDULES)}; found {fields['schedule']!r}")
  for name, (lo, hi, lo_in, hi_in) in RANGES.items():
    value = fields.get(name)
    if value is None and name == "momentum":
      continue  # plain SGD
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = number and math.isfinite(value) and (value >= lo if lo_in else value > lo) and (
        hi is None or (value <= hi if hi_in else value < hi))
    if ok and name == "warmup_steps":
      ok = float(value).is_integer()
    if not ok:
      kind = "an integer " if name == "warmup_steps" else ""
      raise ValueError(f"{where}.{name} must be {kind}{_range_text(lo, hi, lo_in, hi_in)}; "
                       f"found {value!r}")


def resolve_config(cfg: OptimizerConfig = None, *, required: tuple[str, ...] = REQUIRED,
                   **overrides) -> dict[str, Any]:
  """The fields of ``cfg`` updated by ``overrides``, with :data:`DEFAULTS` filled in.

  Args:
    cfg: a ``ConfigDict``, a ``Mapping`` or None (no fields).
    required: fields that must be given.
    **overrides: fields that replace those of ``cfg``.

  Returns:
    A plain dict holding every field of :data:`KNOWN_FIELDS` that was given or has a default.

  Raises:
    TypeError: ``cfg`` of another type.
    ValueError: an unknown field (the known ones are listed) or a missing required one.
  """
  if cfg is None:
    fields = {}
  elif isinstance(cfg, ml_collections.ConfigDict):
    fields = cfg.to_dict()
  elif isinstance(cfg, Mapping):
    fields = dict(cfg)
  else:
    raise TypeError(f"optimizer config must be a ConfigDict, a Mapping or None; found "
                    f"{type(cfg).__name__}")
  fields.update(overrides)
  unknown = [k for k in fields if k not in KNOWN_FIELDS]
  if unknown:
    raise ValueError(f"unknown optimizer field(s) {unknown}; known: {', '.join(KNOWN_FIELDS)}")
  missing = [k for k in required if k not in fields]
  if missing:
    raise ValueError(f"optimizer config is missing {missing}; got fields {sorted(fields)}")
  return {**DEFAULTS, **fields}


def _need_total_steps(total_steps: int | None, schedule: str) -> int:
  if total_steps is None:
    raise ValueError(f"schedule {schedule!r} needs total_steps (an int); found None")
  return total_steps


def make_schedule(cfg: OptimizerConfig = None, total_steps: int | None = None,
                  **kwargs) -> optax.Schedule:
  """Learning-rate schedule for ``total_steps`` steps.

  Args:
    cfg: ``config.optimizer`` as a ``ConfigDict``, a ``Mapping`` or None (see the module
      docstring; only ``learning_rate`` is required here, optimizer fields are accepted and
      ignored).
    total_steps: number of training steps; may be None for the ``'constant'`` schedule.
    **kwargs: fields overriding those of ``cfg``.

  Returns:
    ``fn(step) -> learning rate``.

  Raises:
    ValueError: unknown field or schedule name, or ``total_steps`` missing where needed.
  """
  fields = resolve_config(cfg, required=("learning_rate",), **kwargs)
  lr = fields["learning_rate"]
  if not lr > 0:
    raise ValueError(f"optimizer learning_rate must be > 0; found {lr!r}")
  name = fields["schedule"]
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "warmup_cosine":
    total_steps = _need_total_steps(total_steps, name)
    warmup = min(fields["warmup_steps"], max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=fields["end_lr_fraction"] * lr)
  if name == "onecycle":
    total_steps = _need_total_steps(total_steps, name)
    return optax.cosine_onecycle_schedule(
        transition_steps=max(total_steps, 1), peak_value=lr, pct_start=fields["pct_start"],
        div_factor=fields["div_factor"], final_div_factor=fields["final_div_factor"])
  raise ValueError(f"unknown schedule {name!r}; expected one of "
                   f"{', '.join(repr(s) for s in SCHEDULES)}")


def _decay_mask(params):
  return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def make_optimizer(cfg: OptimizerConfig = None, total_steps: int | None = None,
                   **kwargs) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns ``(tx, schedule)`` for the optimizer fields in ``cfg`` and ``kwargs``.

  Args:
    cfg: ``config.optimizer`` as a ``ConfigDict``, a ``Mapping`` or None (see the module
      docstring for the fields; ``name`` and ``learning_rate`` are required).
    total_steps: number of training steps (for the schedule); may be None for the
      ``'constant'`` schedule.
    **kwargs: fields overriding those of ``cfg``, e.g.
      ``make_optimizer(name="adamw", learning_rate=1e-3, weight_decay=1e-4)``.

  Returns:
    ``(tx, schedule)``: the optax transformation and its learning-rate schedule.

  Raises:
    TypeError: ``cfg`` of another type.
    ValueError: unknown field, optimizer or schedule name, or a missing required field.
  """
  fields = resolve_config(cfg, **kwargs)
  schedule = make_schedule(fields, total_steps)
  name = fields["name"]
  wd = fields["weight_decay"]
  parts = []
  if fields["grad_clip_norm"]:
    parts.append(optax.clip_by_global_norm(fields["grad_clip_norm"]))
  if name == "sgd":
    if wd:
      parts.append(optax.add_decayed_weights(wd, mask=_decay_mask))
    parts.append(optax.sgd(schedule, momentum=fields["momentum"] or None,
                           nesterov=fields["nesterov"]))
  elif name in ("adamw", "adam"):
    parts.append(optax.adamw(schedule, b1=fields["b1"], b2=fields["b2"],
                             weight_decay=wd if name == "adamw" else 0.0, mask=_decay_mask))
  else:
    raise ValueError(f"unknown optimizer {name!r}; expected one of "
                     f"{', '.join(repr(o) for o in OPTIMIZERS)}")
  return optax.chain(*parts), schedule


def path_name(path) -> str:
  """``'Conv_0/kernel'`` for a pytree key path of a params tree."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def with_param_groups(tx: optax.GradientTransformation, *, head: str,
                      freeze_backbone: bool = False,
                      backbone_lr_multiplier: float = 1.0) -> optax.GradientTransformation:
  """``tx`` for the head, and for the rest (the backbone) frozen or at a scaled rate.

  Args:
    tx: the optimizer (from :func:`make_optimizer`).
    head: a regular expression; parameters whose path (``'Dense_1/kernel'``) it finds
      (``re.search``) are the head and train with ``tx`` as it is.
    freeze_backbone: the other parameters get zero updates (a linear probe when the head is
      the last layer).
    backbone_lr_multiplier: otherwise, their updates are ``tx``'s scaled by this factor
      (a lower learning rate for a pretrained backbone), in ``(0, 1]`` typically.

  Raises:
    ValueError: a pattern that does not compile or a multiplier <= 0.
  """
  try:
    pattern = re.compile(head)
  except re.error as e:
    raise ValueError(f"config.head must be a regular expression; found {head!r} ({e})") from None
  if not backbone_lr_multiplier > 0:
    raise ValueError(f"backbone_lr_multiplier must be > 0; found {backbone_lr_multiplier!r}")

  def labels(params):
    def label(path, _):
      return "head" if pattern.search(path_name(path)) else "backbone"
    tree = jax.tree_util.tree_map_with_path(label, params)
    if "head" not in jax.tree.leaves(tree):
      names = sorted(path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params))
      raise ValueError(f"config.head={head!r} matches no parameter; parameters: {names[:12]}")
    return tree

  backbone = (optax.set_to_zero() if freeze_backbone
              else optax.chain(tx, optax.scale(backbone_lr_multiplier)))
  return optax.multi_transform({"head": tx, "backbone": backbone}, labels)
