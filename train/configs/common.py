"""Shared defaults of the configs (each experiment overrides a few fields)."""

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
  # Test-time augmentation: average the probabilities of each evaluated image and its
  # left-right mirror (twice the evaluation cost; results say "flip_tta": true).
  c.eval_flip_tta = False

  c.model = ml_collections.ConfigDict({"name": "SimpleCNN"})
  c.dtype = "float32"  # compute dtype; params stay float32 ("bfloat16" for mixed precision)

  c.optimizer = ml_collections.ConfigDict({
      "name": "adamw", "learning_rate": 1e-3, "schedule": "warmup_cosine", "warmup_steps": 100,
      "weight_decay": 0.0, "grad_clip_norm": 0.0, "momentum": 0.9, "nesterov": False,
      "b1": 0.9, "b2": 0.999, "pct_start": 0.25, "end_lr_fraction": 0.0,
  })
  c.label_smoothing = 0.0
  # Fine-tuning: start from another classification workdir's best checkpoint (weights wherever
  # names and shapes match); `head` is a regular expression naming the head's parameters (e.g.
  # '^Dense_1/'); the backbone (the rest) is frozen or trained at a scaled learning rate.
  c.init_from = ""
  c.head = ""
  c.freeze_backbone = False
  c.backbone_lr_multiplier = 1.0

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


def detection_config() -> ml_collections.ConfigDict:
  """Defaults of the detection configs (``jaxvision.tasks.detection``)."""
  c = ml_collections.ConfigDict()
  c.task = "detection"
  # A Pascal VOC or COCO folder, or its path under $JAXVISION_DATA_DIR (default ../shared/data).
  c.dataset = "bccd/BCCD"
  c.train_split = "train"
  c.eval_split = "val"  # model selection (the best checkpoint by best_metric)
  c.test_split = "test"  # evaluated once, with the best checkpoint, at the end
  c.best_metric = "VOC_AP50"
  c.canvas_size = 384  # images are fitted into an S x S canvas (longer side = S, zero padded)
  c.max_boxes = 64  # ground truth per image, padded (more: the first ones, with a warning)
  c.value_range = (0.0, 1.0)
  # Training augmentation: left-right and up-down flips, scale jitter (then a random crop).
  c.scale_range = (0.75, 1.33)
  c.flip_prob = 0.5
  c.vflip_prob = 0.0
  c.min_box_size = 2.0
  c.shuffle_buffer = 256

  c.model = ml_collections.ConfigDict({"name": "FCOS"})
  c.dtype = "float32"
  c.optimizer = ml_collections.ConfigDict({
      "name": "adamw", "learning_rate": 1e-3, "schedule": "warmup_cosine", "warmup_steps": 200,
      "weight_decay": 1e-4, "grad_clip_norm": 10.0, "momentum": 0.9, "nesterov": False,
      "b1": 0.9, "b2": 0.999, "pct_start": 0.25, "end_lr_fraction": 0.0,
  })
  c.seed = 0
  c.batch_size = 8
  c.eval_batch_size = 8
  c.num_epochs = 100
  c.num_train_steps = -1  # > 0 overrides num_epochs
  c.log_every_steps = 25
  c.eval_every_steps = -1  # -1: once per epoch
  c.checkpoint_every_steps = -1
  c.keep_checkpoints = 2
  c.num_draw = 4  # validation images with detections drawn to TensorBoard per evaluation
  c.num_devices = config_dict.placeholder(int)
  c.disable_progress_bar = config_dict.placeholder(bool)
  return c
