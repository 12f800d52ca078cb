"""Detection backbones: Linen modules that return multi-level feature maps.

Contract: ``backbone(images, train=...) -> dict[int, Array]`` maps a level ``l`` to an NHWC
float32 feature map of stride ``2**l`` (``[B, H / 2**l, W / 2**l, C_l]`` for inputs
``[B, H, W, 3]`` whose height and width are divisible by the largest stride).

* :class:`ResNetGN`: a small ResNet with GroupNorm (no mutable collections), for training from
  scratch at small batch sizes; levels 2..5.
* :class:`ResNetBackbone`: ``jaxvision.models.cnn.ResNet`` (ResNet18/34/50, ImageNet stem,
  BatchNorm in the ``'batch_stats'`` collection); levels 2..5. Its parameters are exactly those
  of the classifier without its Dense layer, so ImageNet weights load as they are.
* :class:`VGG16Backbone`: VGG16's 13 convolutions without the last max pool; the single level 4
  (conv5_3, stride 16), the Faster R-CNN tutorials' backbone. Parameters ``Conv_0 .. Conv_12``
  as in ``VGG16``.

:func:`create_backbone` builds one by name.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.models import cnn
from jaxvision.models.layers import Conv, check_image_batch

Array = jax.Array


def group_norm_groups(channels: int, groups: int) -> int:
  """``groups`` clamped so it divides ``channels``: their greatest common divisor (>= 1)."""
  return math.gcd(int(channels), int(groups)) or 1


def _check_divisible(x: Array, stride: int, name: str) -> None:
  check_image_batch(x, name)
  if x.shape[1] % stride or x.shape[2] % stride:
    raise ValueError(f"{name} expects image height and width divisible by its largest stride "
                     f"{stride}; found images of shape {tuple(x.shape[1:])}")


class _BasicBlockGN(nn.Module):
  """Basic residual block (two 3x3 convs) with GroupNorm; the last norm's scale starts at 0."""
  features: int
  strides: int = 1
  groups: int = 8

  @nn.compact
  def __call__(self, x: Array) -> Array:
    g = group_norm_groups(self.features, self.groups)
    pad = ((1, 1), (1, 1))
    y = Conv(self.features, (3, 3), (self.strides, self.strides), padding=pad, use_bias=False)(x)
    y = nn.relu(nn.GroupNorm(num_groups=g)(y))
    y = Conv(self.features, (3, 3), padding=pad, use_bias=False)(y)
    y = nn.GroupNorm(num_groups=g, scale_init=nn.initializers.zeros_init())(y)
    if x.shape != y.shape:
      x = Conv(self.features, (1, 1), (self.strides, self.strides), use_bias=False,
               name="conv_proj")(x)
      x = nn.GroupNorm(num_groups=g, name="norm_proj")(x)
    return nn.relu(x + y)


class ResNetGN(nn.Module):
  """A small ResNet with GroupNorm, returning levels 2..5.

  Stem: 3x3/2 conv to ``widths[0] // 2`` channels, GroupNorm, ReLU, 3x3/2 conv to
  ``widths[0]``, GroupNorm, ReLU (stride 4, no full-resolution convolution after the first).
  Then four stages of ``stage_sizes`` basic blocks of ``widths`` channels, strides 1, 2, 2, 2
  (stages 2..4 start with a strided block). Every norm is ``GroupNorm`` with ``groups`` groups
  (clamped to divide the width), so there are no mutable collections and ``train`` changes
  nothing.

  Input ``[B, H, W, C]`` (H, W divisible by 32) -> ``{2: [B, H/4, W/4, widths[0]], 3: [..,
  widths[1]], 4: [.., widths[2]], 5: [B, H/32, W/32, widths[3]]}``, float32.
  """
  stage_sizes: Sequence[int] = (1, 1, 1, 1)
  widths: Sequence[int] = (32, 64, 128, 256)
  groups: int = 8

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> dict[int, Array]:
    del train  # GroupNorm only.
    if len(self.stage_sizes) != 4 or len(self.widths) != 4:
      raise ValueError(f"ResNetGN needs 4 stage_sizes and 4 widths (levels 2..5); found "
                       f"stage_sizes={tuple(self.stage_sizes)}, widths={tuple(self.widths)}")
    _check_divisible(x, 32, "ResNetGN")
    x = x.astype(jnp.float32)
    pad = ((1, 1), (1, 1))
    stem = max(self.widths[0] // 2, 1)
    x = Conv(stem, (3, 3), (2, 2), padding=pad, use_bias=False, name="stem_conv1")(x)
    x = nn.relu(nn.GroupNorm(num_groups=group_norm_groups(stem, self.groups),
                             name="stem_norm1")(x))
    x = Conv(self.widths[0], (3, 3), (2, 2), padding=pad, use_bias=False, name="stem_conv2")(x)
    x = nn.relu(nn.GroupNorm(num_groups=group_norm_groups(self.widths[0], self.groups),
                             name="stem_norm2")(x))
    out = {}
    for i, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(size):
        strides = 2 if i > 0 and j == 0 else 1
        x = _BasicBlockGN(width, strides, self.groups, name=f"stage{i + 1}_block{j}")(x)
      out[i + 2] = x
    return out


# A tiny variant for tests and smoke runs.
ResNetGNTiny = functools.partial(ResNetGN, stage_sizes=(1, 1, 1, 1), widths=(8, 16, 32, 32),
                                 groups=4)

_RESNETS = {"resnet18": cnn.ResNet18, "resnet34": cnn.ResNet34, "resnet50": cnn.ResNet50}


class ResNetBackbone(nn.Module):
  """``jaxvision.models.cnn.ResNet`` (ImageNet stem) as a detection backbone, levels 2..5.

  ``resnet`` is a name (``"resnet18"``, ``"resnet34"``, ``"resnet50"``, any case) or a
  ``cnn.ResNet`` module with ``stem='imagenet'`` and ``num_classes=None``. The ResNet shares
  this module's scope, so the parameters and ``'batch_stats'`` are exactly those of
  ``ResNet(num_classes=None)`` (an ImageNet classifier's variables without ``Dense_0`` load as
  they are). BatchNorm uses batch statistics when ``train`` unless ``freeze_batch_stats``
  (running statistics always and nothing to update: the usual choice when fine-tuning a
  pretrained backbone at small batch sizes); with ``train=True`` and batch statistics, apply
  with ``mutable=['batch_stats']``.

  Input ``[B, H, W, 3]`` (H, W divisible by 32) -> ``{2: stage_1 (stride 4), 3: stage_2,
  4: stage_3, 5: stage_4 (stride 32)}``; channels 64/128/256/512 (basic blocks) or
  256/512/1024/2048 (bottlenecks), float32.
  """
  resnet: Any = "resnet18"
  freeze_batch_stats: bool = False

  def setup(self):
    net = self.resnet
    if isinstance(net, str):
      key = net.lower()
      if key not in _RESNETS:
        raise ValueError(f"unknown ResNet {net!r}; expected one of {sorted(_RESNETS)} or a "
                         f"cnn.ResNet module")
      self.net = _RESNETS[key](num_classes=None)
    else:
      if not isinstance(net, cnn.ResNet):
        raise ValueError(f"ResNetBackbone.resnet must be a name or a cnn.ResNet module; found "
                         f"{type(net).__name__}")
      if net.num_classes is not None or net.stem != "imagenet":
        raise ValueError(f"ResNetBackbone needs a ResNet with num_classes=None and "
                         f"stem='imagenet'; found num_classes={net.num_classes}, "
                         f"stem={net.stem!r}")
      self.net = net
    nn.share_scope(self, self.net)

  def __call__(self, x: Array, *, train: bool) -> dict[int, Array]:
    _check_divisible(x, 32, "ResNetBackbone")
    _, out = self.net(x, train=train and not self.freeze_batch_stats)
    return {i + 1: out[f"stage_{i}"].astype(jnp.float32) for i in range(1, 5)}


class VGG16Backbone(nn.Module):
  """VGG16's convolutional layers without the last max pool: ``{4: conv5_3}``, stride 16.

  Parameters ``Conv_0 .. Conv_12`` (and ``BatchNorm_*`` with ``batch_norm``) are exactly those
  of ``cnn.VGG16`` (the wrapped ``cnn.VGG`` shares this module's scope), so VGG16 weights load
  without their Dense layers.

  Input ``[B, H, W, 3]`` (H, W divisible by 16) -> ``{4: [B, H/16, W/16, 512]}`` float32
  (after ReLU).
  """
  batch_norm: bool = False

  def setup(self):
    self.net = cnn.VGG(layers=cnn.VGG_CONFIGS["vgg16"][:-1], num_classes=None,
                       batch_norm=self.batch_norm)
    nn.share_scope(self, self.net)

  def __call__(self, x: Array, *, train: bool) -> dict[int, Array]:
    _check_divisible(x, 16, "VGG16Backbone")
    _, out = self.net(x, train=train)
    return {4: out["features"].astype(jnp.float32)}


BACKBONES = {
    "resnet_gn": ResNetGN,
    "resnet18": functools.partial(ResNetBackbone, resnet="resnet18"),
    "resnet34": functools.partial(ResNetBackbone, resnet="resnet34"),
    "resnet50": functools.partial(ResNetBackbone, resnet="resnet50"),
    "vgg16": VGG16Backbone,
}


def create_backbone(name: str, **kwargs) -> nn.Module:
  """Returns the backbone ``name`` built with ``kwargs`` (its fields).

  Names: ``"resnet_gn"`` (:class:`ResNetGN`), ``"resnet18"``, ``"resnet34"``, ``"resnet50"``
  (:class:`ResNetBackbone`), ``"vgg16"`` (:class:`VGG16Backbone`).

  Raises:
    ValueError: an unknown name (the message lists the known ones).
  """
  if name not in BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; known backbones: {sorted(BACKBONES)}")
  return BACKBONES[name](**kwargs)
