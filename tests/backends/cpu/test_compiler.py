"""Compiler options of the library's steps: chosen per platform, overridable, result-neutral."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxvision import models
from jaxvision.backends import cpu
from jaxvision.backends.cpu import compiler
from jaxvision.tasks import classification as steps
from jaxvision.training import jit, optim, sharding, state as state_lib

YNN = "xla_cpu_experimental_ynn_fusion_type"


def test_cpu_steps_get_the_cpu_options(monkeypatch):
  mesh = sharding.make_mesh(1)
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.delenv("JAXVISION_XLA_DEFAULTS", raising=False)
  options = compiler.compiler_options(mesh)
  assert options == {YNN: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def test_user_flags_and_switch_take_precedence(monkeypatch):
  mesh = sharding.make_mesh(1)
  monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 --{YNN}=")
  assert compiler.compiler_options(mesh) is None
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  monkeypatch.setenv("JAXVISION_XLA_DEFAULTS", "0")
  assert compiler.compiler_options(mesh) is None


def test_unknown_options_are_dropped(monkeypatch):
  monkeypatch.delenv("JAXVISION_XLA_DEFAULTS", raising=False)
  monkeypatch.setitem(compiler.CPU_OPTIONS, "xla_cpu_no_such_option", "1")
  options = compiler.compiler_options(sharding.make_mesh(1))
  assert "xla_cpu_no_such_option" not in options and YNN in options


def test_train_step_with_options_matches_plain_jit(monkeypatch):
  monkeypatch.delenv("JAXVISION_XLA_DEFAULTS", raising=False)
  mesh = sharding.make_mesh(1)
  model = models.SimpleCNN(num_classes=4)
  cfg = ml_collections.ConfigDict({"name": "adam", "learning_rate": 1e-3})
  tx, _ = optim.make_optimizer(cfg, 10)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(8, 28, 28, 1)).astype(np.float32),
           "label": rng.integers(0, 4, 8).astype(np.int32)}

  def run(step):
    state = state_lib.create_train_state(model, tx, input_shape=(28, 28, 1),
                                         rng=jax.random.PRNGKey(0), mesh=mesh)
    for _ in range(2):
      state, metrics = step(state, sharding.shard_batch(batch, mesh))
    return jax.device_get((state.params, metrics["loss"]))

  library = run(jit.jit_train_step(steps.make_train_step(), mesh))
  plain = run(jax.jit(steps.make_train_step()))
  for a, b in zip(jax.tree_util.tree_leaves(library), jax.tree_util.tree_leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_resnet_eval_keeps_convolutions_out_of_ynn_fusions():
  # XLA:CPU hands a reduction to YNNPACK together with the chain feeding it; a spatial-mean
  # reduction after the last stage took 7 of ResNet-18's convolutions into one slow YNNPACK
  # fusion. The backend's global_average_pool avoids that (a dot); this checks the compiled
  # program with XLA's convolutions (where oneDNN runs them, none are left in the program).
  model = models.ResNet18(num_classes=10, stem="cifar")
  x = jnp.zeros((8, 32, 32, 3))
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  options = compiler.compiler_options(sharding.make_mesh(1))
  with cpu.enabled(onednn=False):
    text = jax.jit(lambda v, x: model.apply(v, x, train=False)[0],
                   compiler_options=options).lower(variables, x).compile().as_text()
  assert text.count("convolution(") >= 20  # the model's convolutions are in the program
  for name in re.findall(r"calls=(%[\w.\-]+)[^\n]*__ynn_fusion", text):
    body = re.search(re.escape(name) + r" \([^\n]*\{\n(.*?)\n\}", text, re.S).group(1)
    assert "convolution(" not in body, name
