"""Flax Linen models. Classifiers return ``(logits, intermediates)``; see ``models.cnn``."""

from jaxvision.models.gan import (ConditionalGenerator, Discriminator, Generator,
                                  ProjectionDiscriminator)
from jaxvision.models.rnn import (GRU, LSTM, ConvLSTMCell, ConvLSTMForecaster, RowLSTMClassifier,
                                  SequenceClassifier, StackedRNN)
from jaxvision.models.cnn import (VGG, VGG11, VGG16, LeNet5, ResNet, ResNet18, ResNet34, ResNet50,
                                  SimpleCNN)
from jaxvision.models.keras_import import from_keras, keras_preprocess_spec

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
}


def create_model(name: str, **kwargs):
  """Returns ``MODELS[name](**kwargs)``; unknown names raise a ValueError listing known ones."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; known models: {sorted(MODELS)}")
  return MODELS[name](**kwargs)
