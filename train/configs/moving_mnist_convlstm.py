"""ConvLSTM encoder-forecaster on Moving-MNIST: read 10 frames (64x64), predict the next 10.

Sequences come from ``jaxvision.data.moving_mnist.MovingMnist`` built from the MNIST IDX
folder (``$JAXVISION_DATA_DIR/mnist``), with a custom size: 3000 train sequences (train digits)
and a fixed test set of 500 (test digits). Per-pixel sigmoid BCE, AdamW with a warmup-cosine
schedule and gradient clipping. ``hidden_features=(16, 16)`` is ~40% cheaper per step on CPU
than the model's default (32, 32). Measured figures: docs/RESULTS_LSTM.md.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "sequence_prediction"

  # Moving-MNIST: builder_config 'default' (10000/1000), 'small' (1000/200) or 'custom'
  # (num_train/num_test/data_seed/num_frames/frame_size below; prepared once into a folder
  # named after them).
  c.data = ml_collections.ConfigDict({
      "builder_config": "custom",
      "num_train": 3000,
      "num_test": 500,
      "data_seed": 0,
      "num_frames": 20,
      "frame_size": 64,
      "mnist_dir": config_dict.placeholder(str),  # default: $JAXVISION_DATA_DIR/mnist
      "num_input_frames": 10,
  })
  c.train_split = "train"
  c.eval_split = "test"

  c.model = ml_collections.ConfigDict({
      "name": "ConvLSTMForecaster",
      "stem_features": (16, 32),
      "hidden_features": (16, 16),
      "kernel_size": (3, 3),
  })
  c.dtype = "float32"

  c.optimizer = ml_collections.ConfigDict({
      "name": "adamw", "learning_rate": 2e-3, "schedule": "warmup_cosine", "warmup_steps": 100,
      "weight_decay": 0.0, "grad_clip_norm": 1.0, "b1": 0.9, "b2": 0.999,
      "end_lr_fraction": 0.05,
  })

  c.seed = 0
  c.batch_size = 16
  c.eval_batch_size = 50
  c.num_train_steps = 800
  c.log_every_steps = 25
  c.eval_every_steps = 400
  c.checkpoint_every_steps = 100
  c.keep_checkpoints = 2
  c.num_plot_sequences = 4
  c.num_devices = config_dict.placeholder(int)
  c.disable_progress_bar = config_dict.placeholder(bool)
  return c
