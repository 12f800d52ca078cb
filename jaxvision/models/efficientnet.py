"""EfficientNet-Lite (Tan & Le 2019; the Lite variants of tensorflow/tpu's ``efficientnet/lite``).

Lite differs from EfficientNet-B0: no squeeze-and-excitation, ReLU6 instead of swish, and the
stem (32 channels) and head (1280 channels) are fixed for every size. Everything else follows
the TensorFlow reference, so its ImageNet checkpoints load unchanged
(``models.pretrained_variables('EfficientNetLite0')``):

* convolutions pad as TF ``'SAME'`` (for stride 2 the extra row/column is at the bottom/right,
  which is Flax's ``padding='SAME'``); depthwise convolutions are ``Conv`` with
  ``feature_group_count`` equal to the channels (kernel ``[k, k, 1, C]``);
* BatchNorm with epsilon 1e-3 and momentum 0.99;
* inputs: RGB scaled as ``(x - 127) / 128`` from ``[0, 255]``, 224 x 224 for Lite0
  (``models.preprocessing('EfficientNetLite0')``).

Contract as ``models.cnn``::

    logits, out = model.apply(variables, images, train=False)

``images [B, H, W, 3]`` -> ``logits [B, num_classes]`` float32; ``out['pre_logits']``: the
pooled head features ``[B, 1280]``; ``out['stem']`` (stride 2, 32 channels) and
``out['stage_1']`` .. ``out['stage_7']``: the outputs of the seven block groups, at strides
2, 4, 8, 16, 16, 32, 32 with 16, 24, 40, 80, 112, 192, 320 channels (``stage_3``,
``stage_5`` and ``stage_7`` are the usual stride-8/16/32 detection features).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.models.layers import Conv, check_image_batch, global_average_pool

Dtype = Any

# TensorFlow's initialisers: convolutions N(0, 2 / fan_out); dense U(+-1 / sqrt(fan_out)).
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
DENSE_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")

# One row per block group of EfficientNet-B0 / Lite0:
# (repeats, kernel size, stride of the first block, expansion ratio, output channels).
LITE0_BLOCKS = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


def _conv_and_norm(dtype, train: bool):
  """The convolution (TF 'SAME', no bias) and BatchNorm (TF's epsilon and momentum) of
  every EfficientNet-Lite layer."""
  conv = functools.partial(Conv, use_bias=False, padding="SAME", dtype=dtype,
                           kernel_init=CONV_INIT)
  norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.99,
                           epsilon=1e-3, dtype=dtype)
  return conv, norm


class MBConvBlock(nn.Module):
  """Inverted residual block without squeeze-excitation: ``[B, H, W, C] -> [B, H/s, W/s, out]``.

  1x1 expansion to ``C * expand_ratio`` (left out when the ratio is 1), BatchNorm, ReLU6;
  ``kernel_size`` depthwise convolution with ``strides``, BatchNorm, ReLU6; 1x1 projection to
  ``out_features``, BatchNorm (no activation). The input is added back when the stride is 1
  and ``C == out_features``, after stochastic depth (``drop_path_rate``: each example's
  residual branch is dropped with that probability in training, drawing from the
  ``'dropout'`` rng).
  """
  out_features: int
  kernel_size: int
  strides: int
  expand_ratio: int
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    conv, norm = _conv_and_norm(self.dtype, train)
    in_features = x.shape[-1]
    y = x
    if self.expand_ratio != 1:
      y = conv(in_features * self.expand_ratio, (1, 1), name="expand_conv")(y)
      y = jax.nn.relu6(norm(name="expand_bn")(y))
    hidden = y.shape[-1]
    k, s = self.kernel_size, self.strides
    y = conv(hidden, (k, k), (s, s), feature_group_count=hidden, name="depthwise_conv")(y)
    y = jax.nn.relu6(norm(name="depthwise_bn")(y))
    y = conv(self.out_features, (1, 1), name="project_conv")(y)
    y = norm(name="project_bn")(y)
    if s == 1 and in_features == self.out_features:
      y = nn.Dropout(self.drop_path_rate, broadcast_dims=(1, 2, 3), deterministic=not train)(y)
      y = y + x
    return y


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite classifier (see the module docstring for the contract and outputs).

  Attributes:
    num_classes: outputs of the final Dense layer (``classifier``); 1000 for ImageNet.
    blocks: block groups, rows ``(repeats, kernel, stride, expand_ratio, out_channels)``.
    stem_features, head_features: channels of the stem (3x3/2) and head (1x1) convolutions.
    dropout_rate: dropout on the pooled features before ``classifier`` (0.2 for Lite0).
    drop_path_rate: stochastic depth; block ``i`` of ``n`` drops its residual branch with
      probability ``drop_path_rate * i / n`` in training (TF's drop_connect).
    dtype: compute dtype; parameters stay float32, logits and ``pre_logits`` are float32.
  """
  num_classes: int = 1000
  blocks: Sequence[tuple[int, int, int, int, int]] = LITE0_BLOCKS
  stem_features: int = 32
  head_features: int = 1280
  dropout_rate: float = 0.2
  drop_path_rate: float = 0.2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    check_image_batch(x, "EfficientNetLite")
    conv, norm = _conv_and_norm(self.dtype, train)
    out = {}
    x = x.astype(self.dtype)
    x = conv(self.stem_features, (3, 3), (2, 2), name="stem_conv")(x)
    x = jax.nn.relu6(norm(name="stem_bn")(x))
    out["stem"] = x
    total = sum(row[0] for row in self.blocks)
    index = 0
    for group, (repeats, kernel, stride, expand, features) in enumerate(self.blocks):
      for j in range(repeats):
        x = MBConvBlock(features, kernel, stride if j == 0 else 1, expand,
                        drop_path_rate=self.drop_path_rate * index / total, dtype=self.dtype,
                        name=f"block_{index}")(x, train=train)
        index += 1
      out[f"stage_{group + 1}"] = x
    x = conv(self.head_features, (1, 1), name="head_conv")(x)
    x = jax.nn.relu6(norm(name="head_bn")(x))
    x = global_average_pool(x)
    out["pre_logits"] = x.astype(jnp.float32)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=DENSE_INIT,
                      name="classifier")(x)
    return logits.astype(jnp.float32), out


EfficientNetLite0 = functools.partial(EfficientNetLite, blocks=LITE0_BLOCKS)
