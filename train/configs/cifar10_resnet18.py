"""ResNet-18 with the CIFAR stem on CIFAR-10 (TFDS catalog), SGD + one-cycle, label smoothing."""

import ml_collections

from train.configs import common

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def get_config():
  c = common.classification_config()
  c.dataset = "cifar10"
  c.pp_train = f"random_crop(32, pad=4)|flip_lr|value_range(0, 1)|normalize({MEAN}, {STD})"
  c.pp_eval = f"value_range(0, 1)|normalize({MEAN}, {STD})"
  c.model = ml_collections.ConfigDict({"name": "ResNet18", "stem": "cifar"})
  c.batch_size = 512
  c.num_epochs = 30
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.4
  c.optimizer.schedule = "onecycle"
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 5e-4
  c.label_smoothing = 0.1
  c.log_every_steps = 50
  return c
