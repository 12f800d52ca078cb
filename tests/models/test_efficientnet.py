"""EfficientNet-Lite0: output contract, parameter count, and blocks against TensorFlow's ops."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from jaxvision import models
from jaxvision.models import efficientnet


def _init(model, shape, seed=0):
  return jax.jit(lambda: model.init(jax.random.PRNGKey(seed), jnp.zeros(shape), train=False))()


def _apply(model, variables, x):
  return jax.jit(functools.partial(model.apply, train=False))(variables, x)


def test_output_contract_and_stage_shapes():
  model = models.create_model("EfficientNetLite0", num_classes=7)
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  variables = jax.eval_shape(lambda: _init(model, x.shape))
  logits, out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert out["pre_logits"].shape == (2, 1280) and out["pre_logits"].dtype == jnp.float32
  assert out["stem"].shape == (2, 32, 32, 32)
  # Strides 2, 4, 8, 16, 16, 32, 32 of a 64x64 input.
  assert [out[f"stage_{i}"].shape[1:] for i in range(1, 8)] == [
      (32, 32, 16), (16, 16, 24), (8, 8, 40), (4, 4, 80), (4, 4, 112), (2, 2, 192), (2, 2, 320)]
  # Depthwise kernels are [k, k, 1, C] (feature_group_count=C).
  assert variables["params"]["block_1"]["depthwise_conv"]["kernel"].shape == (3, 3, 1, 96)
  assert "expand_conv" not in variables["params"]["block_0"]


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def test_parameter_count_matches_the_reference():
  # 4,652,008 parameters: timm's and Keras's EfficientNet-Lite0 (4.65M). The TF-converted
  # PyTorch state dict has 296 tensors with 4,694,073 elements: these 247 (weights and
  # BatchNorm statistics) plus 49 one-element num_batches_tracked counters.
  model = models.create_model("EfficientNetLite0", num_classes=1000)
  variables = jax.eval_shape(lambda: _init(model, (1, 224, 224, 3)))
  assert _count(variables["params"]) == 4_652_008
  assert len(jax.tree_util.tree_leaves(variables)) == 247
  assert _count(variables) == 4_694_073 - 49


# A small variant (two groups, the second with a residual block) where the full model is not
# needed: the same code, a fraction of the compile time.
TINY = {"blocks": ((1, 3, 1, 1, 16), (2, 3, 2, 2, 24)), "head_features": 8}


def test_train_mode_updates_batch_stats_and_uses_dropout():
  model = models.EfficientNetLite(num_classes=3, dropout_rate=0.5, drop_path_rate=0.5, **TINY)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  variables = _init(model, x.shape)

  @jax.jit
  def run(key):
    return model.apply(variables, x, train=True, mutable=["batch_stats"],
                       rngs={"dropout": key})

  (a, _), updates = run(jax.random.PRNGKey(0))
  (b, _), _ = run(jax.random.PRNGKey(1))
  assert not np.allclose(a, b)
  before = variables["batch_stats"]["stem_bn"]["mean"]
  assert not np.allclose(updates["batch_stats"]["stem_bn"]["mean"], before)


def _randomize(variables, seed):
  """Random weights and BatchNorm statistics (variances in [0.5, 2]) so every term counts."""
  leaves, tree = jax.tree_util.tree_flatten_with_path(variables)
  rng = np.random.default_rng(seed)
  out = []
  for path, leaf in leaves:
    if path[-1].key == "var":
      out.append(rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32))
    else:
      out.append((0.3 * rng.standard_normal(leaf.shape)).astype(np.float32))
  return jax.tree_util.tree_unflatten(tree, out)


def _tf_block(x, p, s, *, stride, expand, residual):
  """The TF EfficientNet-Lite block with tf.nn ops (TF's own 'SAME' padding)."""

  def bn(y, name):
    return ((y - s[name]["mean"]) / np.sqrt(s[name]["var"] + 1e-3) * p[name]["scale"]
            + p[name]["bias"])

  y = x
  if expand:
    y = tf.nn.relu6(bn(tf.nn.conv2d(y, p["expand_conv"]["kernel"], 1, "SAME"), "expand_bn"))
  dw = np.transpose(p["depthwise_conv"]["kernel"], (0, 1, 3, 2))  # [k, k, 1, C] -> [k, k, C, 1]
  y = tf.nn.depthwise_conv2d(y, dw, [1, stride, stride, 1], "SAME")
  y = tf.nn.relu6(bn(y, "depthwise_bn"))
  y = bn(tf.nn.conv2d(y, p["project_conv"]["kernel"], 1, "SAME"), "project_bn")
  return (y + x if residual else y).numpy()


@pytest.mark.parametrize("features,kernel,stride,expand,shape", [
    (24, 5, 2, 6, (2, 9, 9, 16)),   # odd size, stride 2: TF puts the extra padding bottom/right
    (24, 5, 2, 6, (2, 10, 10, 16)),
    (16, 3, 1, 6, (2, 7, 7, 16)),   # residual
    (16, 3, 1, 1, (2, 7, 7, 32)),   # no expansion (block 0)
])
def test_block_equals_tensorflow(features, kernel, stride, expand, shape):
  block = efficientnet.MBConvBlock(features, kernel, stride, expand)
  x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  variables = _randomize(block.init(jax.random.PRNGKey(0), jnp.asarray(x), train=False), 1)
  got = block.apply(variables, jnp.asarray(x), train=False)
  params = jax.tree_util.tree_map(np.asarray, variables["params"])
  stats = jax.tree_util.tree_map(np.asarray, variables["batch_stats"])
  want = _tf_block(x, params, stats, stride=stride, expand=expand != 1,
                   residual=stride == 1 and shape[-1] == features)
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_stem_pads_like_tensorflow():
  model = models.EfficientNetLite(num_classes=2, **TINY)
  x = np.random.default_rng(0).standard_normal((1, 33, 33, 3)).astype(np.float32)
  variables = _randomize(_init(model, x.shape), 2)
  _, out = _apply(model, variables, jnp.asarray(x))
  p = jax.tree_util.tree_map(np.asarray, variables["params"]["stem_bn"])
  s = jax.tree_util.tree_map(np.asarray, variables["batch_stats"]["stem_bn"])
  y = tf.nn.conv2d(x, np.asarray(variables["params"]["stem_conv"]["kernel"]), 2, "SAME")
  want = tf.nn.relu6((y - s["mean"]) / np.sqrt(s["var"] + 1e-3) * p["scale"] + p["bias"])
  np.testing.assert_allclose(np.asarray(out["stem"]), want.numpy(), rtol=1e-4, atol=1e-4)
