"""LeNet-5 on MNIST (local IDX folder when present, else the TFDS catalog)."""

import ml_collections

from train.configs import mnist_cnn


def get_config():
  c = mnist_cnn.get_config()
  c.model = ml_collections.ConfigDict({"name": "LeNet5", "dropout_rate": 0.1})
  return c
