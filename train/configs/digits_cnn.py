"""The demo: SimpleCNN on scikit-learn's embedded handwritten digits (no network, no files).

8x8 digits are upsampled to 16x16 so the Keras-tutorial architecture (two VALID 3x3 convs and
two 2x2 pools) keeps a 2x2x64 map; light augmentation and dropout.
"""

from train.configs import common


def get_config():
  c = common.classification_config()
  c.dataset = "digits"
  c.pp_train = "resize(16)|random_crop(16, pad=1)|rotate(8)|value_range(0, 1)"
  c.pp_eval = "resize(16)|value_range(0, 1)"
  c.model.dropout_rate = 0.25
  c.batch_size = 64
  c.eval_batch_size = 256
  c.num_epochs = 40
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 50
  c.log_every_steps = 20
  c.eval_every_steps = 220
  return c
