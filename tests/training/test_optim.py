"""Optimizer and schedule construction from configs, dicts and keywords, against optax."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxvision.training import optim


def _cfg(**kw):
  base = {"name": "sgd", "learning_rate": 0.1, "schedule": "constant"}
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_warmup_cosine_values():
  sched = optim.make_schedule(_cfg(schedule="warmup_cosine", warmup_steps=10), 110)
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(float(sched(5)), 0.05, rtol=1e-6)
  np.testing.assert_allclose(float(sched(10)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(sched(60)), 0.1 * 0.5 * (1 + math.cos(math.pi * 0.5)),
                             rtol=1e-5)
  np.testing.assert_allclose(float(sched(110)), 0.0, atol=1e-8)


def test_onecycle_peaks_at_pct_start():
  sched = optim.make_schedule(_cfg(schedule="onecycle", pct_start=0.3), 100)
  values = np.array([float(sched(i)) for i in range(101)])
  assert int(values.argmax()) == 30
  np.testing.assert_allclose(values.max(), 0.1, rtol=1e-6)
  np.testing.assert_allclose(values[0], 0.1 / 25, rtol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_skips_biases(name):
  tx, _ = optim.make_optimizer(_cfg(name=name, weight_decay=0.5, momentum=0.0), 10)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(jnp.abs(updates["bias"]).max()) == 0.0
  assert float(updates["kernel"][0, 0]) < 0.0


def test_gradient_clipping():
  tx, _ = optim.make_optimizer(_cfg(learning_rate=1.0, grad_clip_norm=1.0, momentum=0.0), 1)
  params = {"w": jnp.zeros((2,))}
  updates, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["w"]), [-0.6, -0.8], rtol=1e-6)


def test_unknown_names_are_clear_errors():
  with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
    optim.make_optimizer(_cfg(name="lamb"), 10)
  with pytest.raises(ValueError, match="unknown schedule 'step'"):
    optim.make_schedule(_cfg(schedule="step"), 10)


def _updates(tx, steps=3):
  """Updates of ``steps`` steps of ``tx`` from fixed params and gradients (float64 inputs)."""
  params = {"kernel": jnp.arange(6.0).reshape(2, 3) / 5, "bias": jnp.array([0.5, -1.0, 2.0])}
  grads = {"kernel": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "bias": jnp.array([0.3, 0.0, -2.0])}
  state, out = tx.init(params), []
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    out.append(updates)
  return out


def _assert_same_updates(tx, reference):
  for got, want in zip(_updates(tx), _updates(reference)):
    for k in want:
      np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-6, atol=1e-7)


def _no_vectors(params):
  return {"kernel": True, "bias": False}


ADAMW = {"name": "adamw", "learning_rate": 0.01, "weight_decay": 0.1, "b1": 0.8,
         "grad_clip_norm": 0.5}


@pytest.mark.parametrize("form", ["configdict", "dict", "kwargs", "dict_plus_kwargs"])
def test_config_forms_match_direct_optax_adamw(form):
  if form == "configdict":
    tx, _ = optim.make_optimizer(ml_collections.ConfigDict(ADAMW), 10)
  elif form == "dict":
    tx, _ = optim.make_optimizer(ADAMW, total_steps=10)
  elif form == "kwargs":
    tx, _ = optim.make_optimizer(total_steps=10, **ADAMW)
  else:  # Keyword arguments override the dict's fields.
    tx, _ = optim.make_optimizer({**ADAMW, "b1": 0.3, "name": "sgd"}, 10, b1=0.8, name="adamw")
  reference = optax.chain(
      optax.clip_by_global_norm(0.5),
      optax.adamw(0.01, b1=0.8, b2=0.999, weight_decay=0.1, mask=_no_vectors))
  _assert_same_updates(tx, reference)


def test_sgd_keywords_match_direct_optax():
  tx, schedule = optim.make_optimizer(name="sgd", learning_rate=0.2, momentum=0.5, nesterov=True,
                                      weight_decay=0.01, schedule="onecycle", pct_start=0.3,
                                      total_steps=20)
  reference_schedule = optax.cosine_onecycle_schedule(20, 0.2, pct_start=0.3, div_factor=25.0,
                                                      final_div_factor=1e4)
  reference = optax.chain(optax.add_decayed_weights(0.01, mask=_no_vectors),
                          optax.sgd(reference_schedule, momentum=0.5, nesterov=True))
  _assert_same_updates(tx, reference)
  for step in (0, 3, 6, 19):
    np.testing.assert_allclose(float(schedule(step)), float(reference_schedule(step)), rtol=1e-6)


def test_make_schedule_from_dict_and_keywords():
  reference = optax.warmup_cosine_decay_schedule(0.0, 0.4, 5, 50, end_value=0.4 * 0.1)
  from_dict = optim.make_schedule({"learning_rate": 0.4, "schedule": "warmup_cosine",
                                   "warmup_steps": 5, "end_lr_fraction": 0.1}, 50)
  from_kwargs = optim.make_schedule(total_steps=50, learning_rate=0.4, schedule="warmup_cosine",
                                    warmup_steps=5, end_lr_fraction=0.1)
  for step in (0, 2, 5, 30, 50):
    np.testing.assert_allclose(float(from_dict(step)), float(reference(step)), rtol=1e-6)
    np.testing.assert_allclose(float(from_kwargs(step)), float(reference(step)), rtol=1e-6)
  # A constant schedule needs no step count; the optimizer fields of a config are accepted.
  constant = optim.make_schedule({"name": "sgd", "learning_rate": 0.3, "momentum": 0.0})
  assert float(constant(0)) == float(constant(1000)) == pytest.approx(0.3)


def test_bad_fields_are_clear_errors():
  with pytest.raises(ValueError, match=r"unknown optimizer field\(s\) \['lr'\]; known: name, "
                     r"learning_rate, schedule, .*grad_clip_norm"):
    optim.make_optimizer(name="sgd", lr=0.1)
  with pytest.raises(ValueError, match=r"unknown optimizer field\(s\) \['warmup'\]"):
    optim.make_schedule({"learning_rate": 0.1, "warmup": 3}, 10)
  with pytest.raises(ValueError, match=r"missing \['learning_rate'\]"):
    optim.make_optimizer({"name": "adam"}, 10)
  with pytest.raises(ValueError, match="schedule 'onecycle' needs total_steps"):
    optim.make_optimizer(name="adam", learning_rate=0.1, schedule="onecycle")
  with pytest.raises(TypeError, match="ConfigDict, a Mapping or None; found list"):
    optim.make_optimizer([("name", "sgd")], 10)


def test_param_groups_scale_or_freeze_the_backbone_and_leave_the_head():
  params = {"head": {"kernel": jnp.ones((3, 2))}, "conv": {"kernel": jnp.ones((2, 2, 1, 3))}}
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.3) * jnp.arange(p.size).reshape(p.shape),
                       params)
  tx, _ = optim.make_optimizer(name="adamw", learning_rate=0.1, weight_decay=0.01)
  plain, _ = tx.update(grads, tx.init(params), params)
  for multiplier in (0.5, 1.0):
    grouped = optim.with_param_groups(tx, head="^head/", backbone_lr_multiplier=multiplier)
    updates, _ = grouped.update(grads, grouped.init(params), params)
    np.testing.assert_array_equal(updates["head"]["kernel"], plain["head"]["kernel"])
    np.testing.assert_allclose(updates["conv"]["kernel"], multiplier * plain["conv"]["kernel"],
                               rtol=1e-6)
  frozen = optim.with_param_groups(tx, head="^head/", freeze_backbone=True)
  updates, _ = frozen.update(grads, frozen.init(params), params)
  np.testing.assert_array_equal(updates["conv"]["kernel"], 0.0)
  np.testing.assert_array_equal(updates["head"]["kernel"], plain["head"]["kernel"])
  with pytest.raises(ValueError, match=r"config.head='\^fc/' matches no parameter"):
    optim.with_param_groups(tx, head="^fc/").init(params)
  with pytest.raises(ValueError, match="backbone_lr_multiplier must be > 0; found 0"):
    optim.with_param_groups(tx, head="^head/", backbone_lr_multiplier=0)
