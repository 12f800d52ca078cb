"""Shared defaults for image-classification configs (each experiment overrides a few fields)."""

import ml_collections
from ml_collections import config_dict


def classification_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "classification"
  # Data: a name ('digits', 'mnist', 'fashion_mnist', 'cifar10'); data_dir overrides the local
  # folder (default $JAXVISION_DATA_DIR/<name>, falling back to the TFDS catalog). Your own
  # images: a folder (root/<class>/*.jpg, or root/{train,test}/<class>/...) or a .zip of one,
  # with options after '?', e.g. '/data/pets?size=64&validation_split=0.1' (then
  # eval_split = 'validation'); see jaxvision/data/builders/imagefolder.py.
  c.dataset = "digits"
  c.data_dir = config_dict.placeholder(str)
  c.train_split = "train"
  c.eval_split = "test"
  c.pp_train = "value_range(0, 1)"
  c.pp_eval = "value_range(0, 1)"
  c.input_shape = config_dict.placeholder(tuple)  # optional check of the pipeline's output

  c.model = ml_collections.ConfigDict({"name": "SimpleCNN"})
  c.dtype = "float32"  # compute dtype; params stay float32 ("bfloat16" for mixed precision)

  c.optimizer = ml_collections.ConfigDict({
      "name": "adamw", "learning_rate": 1e-3, "schedule": "warmup_cosine", "warmup_steps": 100,
      "weight_decay": 0.0, "grad_clip_norm": 0.0, "momentum": 0.9, "nesterov": False,
      "b1": 0.9, "b2": 0.999, "pct_start": 0.25, "end_lr_fraction": 0.0,
  })
  c.label_smoothing = 0.0

  c.seed = 0
  c.batch_size = 128
  c.eval_batch_size = 512
  c.num_epochs = 10
  c.num_train_steps = -1  # > 0 overrides num_epochs
  c.log_every_steps = 50
  c.eval_every_steps = -1  # -1: once per epoch
  c.checkpoint_every_steps = -1  # extra saves between evaluations when > 0
  c.keep_checkpoints = 2
  c.num_devices = config_dict.placeholder(int)  # default: all devices
  c.disable_progress_bar = config_dict.placeholder(bool)  # default: only on a terminal
  return c
