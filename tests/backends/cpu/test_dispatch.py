"""The opt-in: formulations and oneDNN only where a step is traced inside the backend's context.

A plain ``jax.jit`` (or ``jax.export``) of a model traces portable ops and no oneDNN custom
call, with the same values as the backend's form; ``training.jit`` steps get oneDNN on a
one-device CPU mesh only (not on 8 devices, not with ``onednn=False``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import models
from jaxvision.backends import cpu
from jaxvision.backends.cpu import onednn
from jaxvision.training import jit, sharding

TARGETS = tuple(onednn.TARGETS.values())
MODELS = {
    "SimpleCNN": (lambda: models.SimpleCNN(num_classes=10), (4, 28, 28, 1)),
    "ResNet18": (lambda: models.ResNet18(num_classes=10, stem="cifar"), (2, 32, 32, 3)),
}


def _has_onednn(text: str) -> bool:
  return any(t in text for t in TARGETS)


def _onednn_available() -> bool:
  return cpu.use_onednn(None, requested=True) and onednn.available()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_plain_jit_is_portable_and_equals_the_backend_form(name):
  make, shape = MODELS[name]
  model = make()
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  plain = jax.jit(lambda x: model.apply(variables, x, train=False)[0])
  text = plain.lower(x).as_text()
  assert not _has_onednn(text) and "stablehlo.convolution" in text
  assert "stablehlo.custom_call" not in text
  with cpu.enabled():
    backend = jax.jit(lambda x: model.apply(variables, x, train=False)[0])
    backend_text = backend.lower(x).as_text()
    expected = backend(x)
  if _onednn_available():
    assert _has_onednn(backend_text)
  np.testing.assert_allclose(plain(x), expected, rtol=1e-4, atol=1e-4)


def test_export_of_a_plain_jit_works_with_a_symbolic_batch():
  model = models.SimpleCNN(num_classes=10)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False)
  batch = jax.export.symbolic_shape("b")[0]
  exported = jax.export.export(jax.jit(lambda x: model.apply(variables, x, train=False)[0]))(
      jax.ShapeDtypeStruct((batch, 28, 28, 1), jnp.float32))
  assert not _has_onednn(exported.mlir_module())
  x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 28, 28, 1)), jnp.float32)
  np.testing.assert_allclose(exported.call(x), model.apply(variables, x, train=False)[0],
                             rtol=1e-5, atol=1e-5)


def _step(model):
  def step(variables, batch):
    return jnp.sum(jax.grad(lambda v: jnp.sum(model.apply(v, batch, train=False)[0] ** 2))(
        variables)["params"]["Conv_0"]["kernel"])
  return step


@pytest.mark.parametrize("devices,onednn_requested", [(1, True), (8, True), (1, False)])
def test_step_jit_uses_onednn_only_on_a_one_device_mesh(devices, onednn_requested):
  model = models.SimpleCNN(num_classes=10)
  x = np.zeros((8, 28, 28, 1), np.float32)
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  mesh = sharding.make_mesh(devices)
  expected = devices == 1 and onednn_requested and _onednn_available()
  assert cpu.use_onednn(mesh, requested=onednn_requested) == (
      devices == 1 and onednn_requested and cpu.use_onednn(None, requested=True))
  step = jit.jit_train_step(lambda v, b: (v, _step(model)(v, b)), mesh, onednn=onednn_requested)
  state = jax.device_put(variables, sharding.replicated(mesh))
  batch = sharding.shard_batch({"x": x}, mesh)["x"]
  assert _has_onednn(step.lower(state, batch).as_text()) == expected
  general = jit.jit_step(_step(model), mesh, onednn=onednn_requested)
  assert _has_onednn(general.lower(variables, x).as_text()) == expected


def test_export_and_multi_process_rules():
  mesh = sharding.make_mesh(1)
  assert not cpu.use_onednn(mesh, requested=True, export=True)
  assert not cpu.use_onednn(mesh, requested=False)
  assert not cpu.use_onednn(sharding.make_mesh(2), requested=True)


def test_context_is_thread_local_and_restored():
  assert not cpu.active()
  with cpu.enabled(onednn=False):
    assert cpu.active() and not cpu.onednn_active()
    with cpu.enabled():  # an inner block cannot turn oneDNN back on
      assert cpu.active() and not cpu.onednn_active()
    import threading
    seen = []
    thread = threading.Thread(target=lambda: seen.append(cpu.active()))
    thread.start()
    thread.join()
    assert seen == [False]
  assert not cpu.active()
