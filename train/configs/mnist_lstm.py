"""Row-by-row MNIST: a 2-layer bidirectional LSTM reads each 28x28 image as 28 steps of 28 pixels.

``RowLSTMClassifier`` (128 units per direction, last-state pooling, 558k parameters) through
the classification trainer; uses the IDX folder ``$JAXVISION_DATA_DIR/mnist`` when present,
else the TFDS catalog. Shifts of up to 2 pixels (``random_crop(28, pad=2)``) are the only
augmentation; gradients are clipped at global norm 1 (the usual guard for LSTMs) and the
learning rate follows a one-cycle schedule. ``unroll=1`` (one time step per scan iteration):
on XLA:CPU ``unroll=4`` computes the same function but its train step measured 1.3-1.5x
slower (its backward pass). Measured figures: docs/RESULTS_LSTM.md.
"""

from train.configs import common


def get_config():
  c = common.classification_config()
  c.dataset = "mnist"
  c.pp_train = "random_crop(28, pad=2)|value_range(0, 1)|normalize(0.1307, 0.3081)"
  c.pp_eval = "value_range(0, 1)|normalize(0.1307, 0.3081)"
  c.input_shape = (28, 28, 1)
  c.model.name = "RowLSTMClassifier"
  c.model.features = 128
  c.model.num_layers = 2
  c.model.bidirectional = True
  c.model.pooling = "last"
  c.model.dropout_rate = 0.1
  c.model.unroll = 1
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_epochs = 15
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 2e-3
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "onecycle"
  c.optimizer.pct_start = 0.15
  c.optimizer.grad_clip_norm = 1.0
  c.log_every_steps = 100
  return c
