"""Flax Linen models. Classifiers return ``(logits, intermediates)``; see ``models.cnn``.

Pretrained ImageNet weights (``models.pretrained``): ``pretrained_variables(name,
num_classes=...)`` gives the variables for ``create_model(name, num_classes=...)``,
``preprocessing(name)`` the matching pp spec, ``imagenet_class_names()`` the labels.
"""

from jaxvision.models.gan import (ConditionalGenerator, Discriminator, Generator,
                                  ProjectionDiscriminator)
from jaxvision.models.rnn import (GRU, LSTM, ConvLSTMCell, ConvLSTMForecaster, RowLSTMClassifier,
                                  SequenceClassifier, StackedRNN)
from jaxvision.models.cnn import (VGG, VGG11, VGG16, LeNet5, ResNet, ResNet18, ResNet34, ResNet50,
                                  SimpleCNN)
from jaxvision.models.efficientnet import EfficientNetLite, EfficientNetLite0
from jaxvision.models.keras_import import from_keras, keras_preprocess_spec
from jaxvision.models.pretrained import (MissingWeightsError, imagenet_class_names,
                                         preprocessing, pretrained_variables)

# Names usable in configs (``config.model.name``).
MODELS = {
    "SimpleCNN": SimpleCNN,
    "LeNet5": LeNet5,
    "VGG11": VGG11,
    "VGG16": VGG16,
    "ResNet18": ResNet18,
    "ResNet34": ResNet34,
    "ResNet50": ResNet50,
    "RowLSTMClassifier": RowLSTMClassifier,
    "EfficientNetLite0": EfficientNetLite0,
}


def create_model(name: str, **kwargs):
  """Returns ``MODELS[name](**kwargs)``; unknown names raise a ValueError listing known ones.

  The module only: pretrained variables come from ``pretrained_variables(name,
  num_classes=...)`` (a ``weights=`` argument here is a ValueError saying so).
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; known models: {sorted(MODELS)}")
  if "weights" in kwargs:
    raise ValueError(f"create_model returns the module only; for pretrained weights call "
                     f"models.pretrained_variables({name!r}, num_classes=...) next to "
                     f"models.create_model({name!r}, num_classes=...)")
  return MODELS[name](**kwargs)
