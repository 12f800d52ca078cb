"""SimpleCNN (the Keras tutorial convnet) on MNIST.

Uses the IDX folder ``$JAXVISION_DATA_DIR/mnist`` when present, else the TFDS catalog.
"""

from train.configs import common


def get_config():
  c = common.classification_config()
  c.dataset = "mnist"
  c.pp_train = "random_crop(28, pad=2)|rotate(10)|value_range(0, 1)|normalize(0.1307, 0.3081)"
  c.pp_eval = "value_range(0, 1)|normalize(0.1307, 0.3081)"
  c.model.dropout_rate = 0.3
  c.batch_size = 128
  c.num_epochs = 12
  c.optimizer.learning_rate = 2e-3
  c.optimizer.schedule = "onecycle"
  c.optimizer.pct_start = 0.2
  c.log_every_steps = 100
  return c
