"""SimpleCNN on Fashion-MNIST (``$JAXVISION_DATA_DIR/fashion-mnist`` when present, else TFDS)."""

from train.configs import mnist_cnn


def get_config():
  c = mnist_cnn.get_config()
  c.dataset = "fashion_mnist"
  c.pp_train = "random_crop(28, pad=2)|flip_lr|value_range(0, 1)|normalize(0.2860, 0.3530)"
  c.pp_eval = "value_range(0, 1)|normalize(0.2860, 0.3530)"
  c.num_epochs = 20
  return c
