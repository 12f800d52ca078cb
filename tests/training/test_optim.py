"""Optimizer and schedule construction from configs."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
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
