"""Layers shared by the models.

``Conv`` is ``flax.linen.Conv`` computing with ``jaxvision.ops.conv_general_dilated``: the same
parameters, names and forward pass, with gradients written as channels-last convolutions so
they stay on XLA:CPU's fast convolution path inside loops (``lax.scan`` over steps or time,
see ``jaxvision/ops/conv.py``). The models' convolutions use it, except ResNet's: in a
top-level train step XLA:CPU already finds fast gradient layouts, and there ``Conv`` measured
about 8% slower per ResNet-18 (CIFAR, batch 128) step, and no different for SimpleCNN.
"""

import functools

import flax.linen as nn

from jaxvision import ops

Conv = functools.partial(nn.Conv, conv_general_dilated=ops.conv_general_dilated)
