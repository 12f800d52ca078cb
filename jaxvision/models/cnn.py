"""CNN image classifiers: SimpleCNN, LeNet5, VGG and ResNet (Flax Linen).

Every classifier follows one contract::

    logits, out = model.apply(variables, images, train=False)

* ``images``: ``[B, H, W, C]`` float (normalized by the input pipeline).
* ``logits``: ``[B, num_classes]`` float32.
* ``out``: a dict of intermediates. ``out['pre_logits']`` is always the penultimate feature
  vector ``[B, D]`` (for image search, GAN metrics and transfer learning); backbones add
  per-stage feature maps (``out['stage_1']`` ... for ResNet, used by detection).

``train`` is keyword-only: it switches dropout on and BatchNorm to batch statistics (the
``batch_stats`` collection must then be mutable). Dropout draws from the ``'dropout'`` rng.
``dtype`` is the compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32 and logits are
returned in float32.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxvision.models.layers import (Conv, ConvMaxPool, check_image_batch, global_average_pool,
                                     max_pool)

Dtype = Any
ModuleDef = Any


class SimpleCNN(nn.Module):
  """The classic Keras tutorial convnet.

  Conv32 3x3 relu, maxpool 2, Conv64 3x3 relu, maxpool 2, Flatten, Dense 64 relu,
  Dense num_classes; optional dropout before each Dense layer. Convolutions use ``padding``
  (Keras's default ``'VALID'``), so a 28x28 input gives 5x5x64 = 1600 flattened features.

  Input ``[B, H, W, C]`` -> logits ``[B, num_classes]``; ``out['pre_logits']``: ``[B, 64]``.
  """
  num_classes: int = 10
  dropout_rate: float = 0.0
  padding: str = "VALID"
  hidden: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    check_image_batch(x, "SimpleCNN")
    x = x.astype(self.dtype)
    for i, features in enumerate((32, 64)):
      # = max_pool(relu(Conv(features)(x)), 2x2/2): ReLU commutes with the maximum, so it
      # runs on the 4x smaller pooled map, with the bias (see ConvMaxPool).
      x = nn.relu(ConvMaxPool(features, (3, 3), padding=self.padding, window_shape=(2, 2),
                              dtype=self.dtype, name=f"Conv_{i}")(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x))
    pre_logits = x
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return logits.astype(jnp.float32), {"pre_logits": pre_logits.astype(jnp.float32)}


class LeNet5(nn.Module):
  """LeNet-5 (LeCun et al. 1998) for 28x28 or 32x32 grey images.

  C1 conv 6@5x5 (SAME padding for 28x28 inputs so the maps are 28x28, VALID for 32x32),
  S2 2x2 pooling, C3 conv 16@5x5, S4 2x2 pooling, C5 dense 120, F6 dense 84, output
  ``num_classes``. ``activation`` defaults to ReLU and ``pool`` to average pooling (the
  original used scaled tanh and trainable subsampling).

  Input ``[B, 28|32, 28|32, C]`` -> logits ``[B, num_classes]``; ``out['pre_logits']``: ``[B, 84]``.
  """
  num_classes: int = 10
  activation: Callable = nn.relu
  pool: Callable = nn.avg_pool
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    check_image_batch(x, "LeNet5")
    padding = "SAME" if x.shape[1] < 32 else "VALID"
    x = x.astype(self.dtype)
    x = self.activation(Conv(6, (5, 5), padding=padding, dtype=self.dtype)(x))
    x = self.pool(x, (2, 2), strides=(2, 2))
    x = self.activation(Conv(16, (5, 5), padding="VALID", dtype=self.dtype)(x))
    x = self.pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = self.activation(nn.Dense(120, dtype=self.dtype)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = self.activation(nn.Dense(84, dtype=self.dtype)(x))
    pre_logits = x
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return logits.astype(jnp.float32), {"pre_logits": pre_logits.astype(jnp.float32)}


VGG_CONFIGS = {
    # Numbers are conv widths, "M" is a 2x2 max pool (Simonyan & Zisserman 2015, table 1).
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
}


class VGG(nn.Module):
  """VGG with optional BatchNorm.

  3x3 SAME convolutions and 2x2 max pools per ``layers`` (see ``VGG_CONFIGS``), then Flatten and
  two hidden Dense layers of ``classifier_width`` with dropout, then the output layer. Use
  ``classifier_width=4096`` for the ImageNet original and 512 for CIFAR-sized inputs. Inputs
  need height and width divisible by 32 (five pools).

  Input ``[B, H, W, C]`` -> logits ``[B, num_classes]``; ``out['pre_logits']``:
  ``[B, classifier_width]``; ``out['features']``: the last conv map ``[B, H/32, W/32, 512]``.

  ``num_classes=None`` builds the convolutional part only (Keras's ``include_top=False``: no
  Dense layers); the first output is then ``out['pre_logits']``, the flattened last conv map
  ``[B, H/32 * W/32 * 512]``.
  """
  layers: Sequence[Any] = VGG_CONFIGS["vgg11"]
  num_classes: int | None = 10
  batch_norm: bool = False
  classifier_width: int = 512
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    check_image_batch(x, "VGG")
    pools = sum(1 for v in self.layers if v == "M")
    if x.shape[1] % (2 ** pools) or x.shape[2] % (2 ** pools):
      raise ValueError(
          f"VGG with {pools} pooling stages expects height and width divisible by "
          f"{2 ** pools}; found images of shape {tuple(x.shape[1:])}")
    x = x.astype(self.dtype)
    for v in self.layers:
      if v == "M":
        x = max_pool(x, (2, 2), strides=(2, 2))
        continue
      x = Conv(v, (3, 3), padding="SAME", use_bias=not self.batch_norm, dtype=self.dtype)(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
      x = nn.relu(x)
    features = x
    x = x.reshape((x.shape[0], -1))
    if self.num_classes is None:
      pre_logits = x.astype(jnp.float32)
      return pre_logits, {"pre_logits": pre_logits, "features": features}
    for _ in range(2):
      x = nn.relu(nn.Dense(self.classifier_width, dtype=self.dtype)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    pre_logits = x
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return logits.astype(jnp.float32), {"pre_logits": pre_logits.astype(jnp.float32),
                                        "features": features}


VGG11 = functools.partial(VGG, layers=VGG_CONFIGS["vgg11"])
VGG16 = functools.partial(VGG, layers=VGG_CONFIGS["vgg16"])


class ResNetBlock(nn.Module):
  """Basic residual block (two 3x3 convs), as in ResNet-18/34."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides)(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
      residual = self.norm(name="norm_proj")(residual)
    return nn.relu(residual + y)


class BottleneckResNetBlock(nn.Module):
  """Bottleneck block (1x1, 3x3, 1x1 x4), as in ResNet-50.

  The stride is on the 3x3 conv (v1.5) unless ``stride_in_1x1`` puts it on the first 1x1 conv
  (the original v1, as Keras's ``ResNet50``).
  """
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: tuple[int, int] = (1, 1)
  stride_in_1x1: bool = False

  @nn.compact
  def __call__(self, x):
    residual = x
    strides_1x1, strides_3x3 = ((self.strides, (1, 1)) if self.stride_in_1x1
                                else ((1, 1), self.strides))
    y = nn.relu(self.norm()(self.conv(self.filters, (1, 1), strides_1x1)(x)))
    y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), strides_3x3)(y)))
    y = self.conv(self.filters * 4, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters * 4, (1, 1), self.strides, name="conv_proj")(residual)
      residual = self.norm(name="norm_proj")(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """ResNet v1.5 (He et al. 2016) with a CIFAR or ImageNet stem.

  * ``stem='imagenet'``: 7x7/2 conv, BatchNorm, ReLU, 3x3/2 max pool (224x224 inputs).
  * ``stem='cifar'``: 3x3/1 conv, BatchNorm, ReLU, no pool (32x32 inputs).

  Four stages of ``stage_sizes`` blocks with 64, 128, 256, 512 base filters, strides 1, 2, 2, 2,
  then global average pooling and a Dense output layer.

  Input ``[B, H, W, C]`` -> logits ``[B, num_classes]``. ``out['pre_logits']``: ``[B, 512]``
  (basic blocks) or ``[B, 2048]`` (bottlenecks); ``out['stem']`` and ``out['stage_1']`` ..
  ``out['stage_4']``: feature maps at strides 1|4, 1|4, 2|8, 4|16, 8|32 (cifar|imagenet stem).
  ``num_classes=None`` leaves out the Dense layer; the first output is then ``out['pre_logits']``.

  Variants (the defaults are v1.5 as above; Keras's ``ResNet50``, the original v1, is
  ``stride_in_1x1=True, conv_bias=True, bn_epsilon=1.001e-5, stem_pool_padding=((1, 1), (1, 1))``):

  * ``stride_in_1x1``: bottleneck blocks stride their first 1x1 conv instead of the 3x3 conv.
  * ``conv_bias``: convolutions have a bias (as well as the BatchNorm's).
  * ``bn_epsilon``: BatchNorm's epsilon.
  * ``stem_pool_padding``: padding of the imagenet stem's 3x3/2 max pool, ``'SAME'`` or
    ``((top, bottom), (left, right))`` (padded values never win: the pool follows a ReLU).
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block_cls: ModuleDef = ResNetBlock
  num_classes: int | None = 1000
  num_filters: int = 64
  stem: str = "imagenet"
  stride_in_1x1: bool = False
  conv_bias: bool = False
  bn_epsilon: float = 1e-5
  stem_pool_padding: Any = "SAME"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    check_image_batch(x, "ResNet")
    if self.stem not in ("imagenet", "cifar"):
      raise ValueError(f"ResNet stem must be 'imagenet' or 'cifar'; found {self.stem!r}")
    # layers.Conv: in the CPU backend its strided convolutions' input gradients skip the
    # stride's zeros (ResNet-18 CIFAR figures: benchmarks/RESULTS.md).
    block_cls = self.block_cls
    if self.stride_in_1x1:
      if not hasattr(block_cls, "stride_in_1x1"):
        raise ValueError(f"ResNet stride_in_1x1=True needs bottleneck blocks; found block_cls "
                         f"{getattr(block_cls, '__name__', block_cls)}")
      block_cls = functools.partial(block_cls, stride_in_1x1=True)
    conv = functools.partial(Conv, use_bias=self.conv_bias, dtype=self.dtype, padding="SAME")
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=self.bn_epsilon, dtype=self.dtype)
    out = {}
    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
      x = nn.relu(norm(name="bn_init")(x))
      x = max_pool(x, (3, 3), strides=(2, 2), padding=self.stem_pool_padding)
    else:
      x = conv(self.num_filters, (3, 3), name="conv_init")(x)
      x = nn.relu(norm(name="bn_init")(x))
    out["stem"] = x
    for i, block_size in enumerate(self.stage_sizes):
      for j in range(block_size):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        x = block_cls(self.num_filters * 2 ** i, strides=strides, conv=conv, norm=norm)(x)
      out[f"stage_{i + 1}"] = x
    x = global_average_pool(x)
    out["pre_logits"] = x.astype(jnp.float32)
    if self.num_classes is None:
      return out["pre_logits"], out
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return logits.astype(jnp.float32), out


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=ResNetBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=ResNetBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckResNetBlock)
