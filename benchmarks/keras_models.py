"""Keras 3 twins of the jaxvision classifiers, for peer benchmarks.

Each builder mirrors the Flax model of the same name layer for layer (same widths, kernel
sizes, strides, padding, BatchNorm momentum and epsilon, and therefore the same parameter
count), so a Keras/TensorFlow step does the same arithmetic as the JAX step it is compared
with. Inputs are NHWC, outputs are logits.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
from keras import layers  # noqa: E402


def simple_cnn(input_shape, num_classes: int, hidden: int = 64) -> keras.Model:
  """``jaxvision.models.SimpleCNN``: conv32, pool, conv64, pool, dense ``hidden``, dense."""
  return keras.Sequential([
      keras.Input(input_shape),
      layers.Conv2D(32, 3, activation="relu"),
      layers.MaxPooling2D(2),
      layers.Conv2D(64, 3, activation="relu"),
      layers.MaxPooling2D(2),
      layers.Flatten(),
      layers.Dense(hidden, activation="relu"),
      layers.Dense(num_classes),
  ], name="simple_cnn")


def lenet5(input_shape, num_classes: int) -> keras.Model:
  """``jaxvision.models.LeNet5`` (ReLU, average pooling; SAME first conv for 28x28 inputs)."""
  padding = "same" if input_shape[0] < 32 else "valid"
  return keras.Sequential([
      keras.Input(input_shape),
      layers.Conv2D(6, 5, padding=padding, activation="relu"),
      layers.AveragePooling2D(2),
      layers.Conv2D(16, 5, activation="relu"),
      layers.AveragePooling2D(2),
      layers.Flatten(),
      layers.Dense(120, activation="relu"),
      layers.Dense(84, activation="relu"),
      layers.Dense(num_classes),
  ], name="lenet5")


def _bn(name=None, zero_init=False):
  # Flax BatchNorm(momentum=0.9, epsilon=1e-5): same running-average convention as Keras.
  return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name,
                                   gamma_initializer="zeros" if zero_init else "ones")


def _conv(filters, kernel, strides=1, name=None):
  return layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                       name=name)


def _basic_block(x, filters, strides):
  y = layers.ReLU()(_bn()(_conv(filters, 3, strides)(x)))
  y = _bn(zero_init=True)(_conv(filters, 3)(y))
  if x.shape[-1] != filters or strides != 1:
    x = _bn()(_conv(filters, 1, strides)(x))
  return layers.ReLU()(layers.Add()([x, y]))


def _bottleneck_block(x, filters, strides):
  y = layers.ReLU()(_bn()(_conv(filters, 1)(x)))
  y = layers.ReLU()(_bn()(_conv(filters, 3, strides)(y)))
  y = _bn(zero_init=True)(_conv(filters * 4, 1)(y))
  if x.shape[-1] != filters * 4 or strides != 1:
    x = _bn()(_conv(filters * 4, 1, strides)(x))
  return layers.ReLU()(layers.Add()([x, y]))


def resnet(input_shape, num_classes: int, *, stage_sizes=(2, 2, 2, 2), bottleneck=False,
           stem="cifar", num_filters=64, name="resnet") -> keras.Model:
  """``jaxvision.models.ResNet`` (v1.5: stride on the 3x3 conv; zero-init last BN scale)."""
  inputs = keras.Input(input_shape)
  if stem == "imagenet":
    x = layers.ZeroPadding2D(3)(inputs)
    x = layers.Conv2D(num_filters, 7, strides=2, use_bias=False)(x)
    x = layers.ReLU()(_bn()(x))
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
  elif stem == "cifar":
    x = layers.ReLU()(_bn()(_conv(num_filters, 3)(inputs)))
  else:
    raise ValueError(f"stem must be 'imagenet' or 'cifar'; found {stem!r}")
  block = _bottleneck_block if bottleneck else _basic_block
  for i, size in enumerate(stage_sizes):
    for j in range(size):
      x = block(x, num_filters * 2 ** i, 2 if i > 0 and j == 0 else 1)
  x = layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, layers.Dense(num_classes)(x), name=name)


def resnet18(input_shape, num_classes: int, stem: str = "cifar") -> keras.Model:
  return resnet(input_shape, num_classes, stage_sizes=(2, 2, 2, 2), stem=stem, name="resnet18")


def resnet50(input_shape, num_classes: int, stem: str = "imagenet") -> keras.Model:
  return resnet(input_shape, num_classes, stage_sizes=(3, 4, 6, 3), bottleneck=True, stem=stem,
                name="resnet50")
