"""Detection backbones: levels, strides, channels, parameter trees and the level mapping."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models import cnn
from jaxvision.models.detection import backbones

X = jnp.zeros((2, 64, 96, 3), jnp.float32)  # H != W to catch swapped axes


def _shapes(module, x=X, train=False):
  """Output shapes and variable shapes by abstract evaluation (no compilation)."""
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=train))
  out = jax.eval_shape(lambda v: module.apply(v, x, train=False), variables)
  return {k: v.shape for k, v in out.items()}, variables


def _expected(channels):
  # level l: stride 2**l of the 64 x 96 input.
  return {l: (2, 64 // 2 ** l, 96 // 2 ** l, c) for l, c in channels.items()}


@pytest.mark.parametrize("name,kwargs,channels", [
    ("resnet_gn", {}, {2: 32, 3: 64, 4: 128, 5: 256}),
    ("resnet_gn", {"widths": (8, 16, 24, 40), "stage_sizes": (1, 2, 1, 1)},
     {2: 8, 3: 16, 4: 24, 5: 40}),
    ("resnet18", {}, {2: 64, 3: 128, 4: 256, 5: 512}),
    ("resnet50", {}, {2: 256, 3: 512, 4: 1024, 5: 2048}),
    ("vgg16", {}, {4: 512}),
])
def test_levels_strides_and_channels(name, kwargs, channels):
  out, variables = _shapes(backbones.create_backbone(name, **kwargs))
  assert out == _expected(channels)
  has_bn = name.startswith("resnet") and name != "resnet_gn"
  assert ("batch_stats" in variables) == has_bn


def test_resnet_gn_tiny_and_group_clamping():
  out, variables = _shapes(backbones.ResNetGNTiny())
  assert out == _expected({2: 8, 3: 16, 4: 32, 5: 32})
  # groups=8 clamps to gcd(8, 12) = 4 for 12 channels.
  assert backbones.group_norm_groups(12, 8) == 4
  assert backbones.group_norm_groups(256, 32) == 32
  assert backbones.group_norm_groups(6, 32) == 2
  out, variables = _shapes(backbones.ResNetGN(widths=(12, 12, 24, 24), groups=8))
  assert variables["params"]["stem_norm2"]["scale"].shape == (12,)
  assert set(variables) == {"params"}


def _flat_shapes(tree):
  return {k: v.shape for k, v in flax.traverse_util.flatten_dict(tree).items()}


def test_vgg16_backbone_params_are_vgg16_conv_params():
  _, ours = _shapes(backbones.VGG16Backbone())
  theirs = jax.eval_shape(lambda: cnn.VGG16(num_classes=10).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  conv_params = {k: v for k, v in theirs["params"].items() if k.startswith("Conv_")}
  assert len(conv_params) == 13
  assert _flat_shapes(ours["params"]) == _flat_shapes(conv_params)


def test_resnet_backbone_loads_classifier_variables_and_maps_stages_to_levels():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 64, 64, 3)), jnp.float32)
  classifier = cnn.ResNet18(num_classes=10)
  variables = jax.jit(lambda k: classifier.init(k, x, train=False))(jax.random.key(0, impl="rbg"))
  # A classifier's variables without its Dense layer are the backbone's, unchanged.
  backbone_vars = {"params": {k: v for k, v in variables["params"].items() if k != "Dense_0"},
                   "batch_stats": variables["batch_stats"]}
  _, out = classifier.apply(variables, x, train=False)
  levels = backbones.ResNetBackbone("resnet18").apply(backbone_vars, x, train=False)
  assert sorted(levels) == [2, 3, 4, 5]
  for level in range(2, 6):
    np.testing.assert_allclose(np.asarray(levels[level]), np.asarray(out[f"stage_{level - 1}"]),
                               rtol=1e-6, atol=1e-6)
  # A module works as well as a name; batch statistics update only without freezing.
  model = backbones.ResNetBackbone(cnn.ResNet18(num_classes=None))
  _, updates = model.apply(backbone_vars, x, train=True, mutable=["batch_stats"])
  assert "batch_stats" in updates
  frozen = backbones.ResNetBackbone("resnet18", freeze_batch_stats=True)
  a = frozen.apply(backbone_vars, x, train=True)
  np.testing.assert_allclose(np.asarray(a[5]), np.asarray(levels[5]), rtol=1e-6, atol=1e-6)


def test_bad_names_and_inputs():
  with pytest.raises(ValueError, match="known backbones.*resnet_gn"):
    backbones.create_backbone("resnet101")
  with pytest.raises(ValueError, match="unknown ResNet"):
    _shapes(backbones.ResNetBackbone("resnet7"))
  with pytest.raises(ValueError, match="num_classes=None"):
    _shapes(backbones.ResNetBackbone(cnn.ResNet18(num_classes=10)))
  with pytest.raises(ValueError, match="divisible by its largest stride 32"):
    _shapes(backbones.ResNetGNTiny(), x=jnp.zeros((1, 48, 40, 3)))
