"""The benchmarked models: the JAX model, its Keras twin, input shape, optimizer and sizes.

Names used on the command line (``--models simple_cnn,resnet18_cifar``) are the keys of
``SPECS``. Optimizers follow the tutorials each model comes from: Adam for SimpleCNN and
LeNet-5, SGD with momentum 0.9 for the ResNets; the Keras peer gets the same optimizer with
the same hyperparameters.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from jaxvision import models


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """One benchmarked model.

  Attributes:
    name: command-line name.
    input_shape: one example, ``(H, W, C)``.
    num_classes: output classes.
    optimizer: ``config.optimizer`` fields for ``jaxvision.training.optim.make_optimizer``.
    batch: default batch size.
    steps: default steps per timed run.
    repeats: default number of timed runs.
    make_jax: builds the Flax module.
    keras_name: builder name in ``benchmarks.keras_models``.
    keras_kwargs: extra keywords for that builder.
  """
  name: str
  input_shape: tuple[int, int, int]
  num_classes: int
  optimizer: dict
  batch: int
  steps: int
  repeats: int
  make_jax: Callable[[], object]
  keras_name: str
  keras_kwargs: dict = dataclasses.field(default_factory=dict)

  def make_keras(self):
    """Builds the Keras twin (imports Keras/TensorFlow on first use)."""
    from benchmarks import keras_models
    return getattr(keras_models, self.keras_name)(self.input_shape, self.num_classes,
                                                  **self.keras_kwargs)


ADAM = {"name": "adam", "learning_rate": 1e-3, "b1": 0.9, "b2": 0.999}
SGD = {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9}

SPECS = {
    "simple_cnn": ModelSpec(
        "simple_cnn", (28, 28, 1), 10, ADAM, batch=128, steps=20, repeats=7,
        make_jax=lambda: models.SimpleCNN(num_classes=10), keras_name="simple_cnn"),
    "lenet5": ModelSpec(
        "lenet5", (28, 28, 1), 10, ADAM, batch=128, steps=20, repeats=7,
        make_jax=lambda: models.LeNet5(num_classes=10), keras_name="lenet5"),
    "resnet18_cifar": ModelSpec(
        "resnet18_cifar", (32, 32, 3), 10, SGD, batch=128, steps=3, repeats=3,
        make_jax=lambda: models.ResNet18(num_classes=10, stem="cifar"),
        keras_name="resnet18", keras_kwargs={"stem": "cifar"}),
    "resnet50": ModelSpec(
        "resnet50", (224, 224, 3), 1000, SGD, batch=16, steps=2, repeats=3,
        make_jax=lambda: models.ResNet50(num_classes=1000, stem="imagenet"),
        keras_name="resnet50", keras_kwargs={"stem": "imagenet"}),
}


def get_spec(name: str) -> ModelSpec:
  if name not in SPECS:
    raise ValueError(f"unknown benchmark model {name!r}; known: {sorted(SPECS)}")
  return SPECS[name]
