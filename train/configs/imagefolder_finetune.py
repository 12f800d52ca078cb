"""Fine-tune EfficientNet-Lite0's ImageNet weights on your own folder of images.

Point it at a folder ``root/<class>/*.{png,jpg,jpeg}`` (or ``root/{train,test}/<class>/...``, or
a ``.zip`` of one); 10% of the training images are held out for validation unless the folder
has its own test split:

  python -m train.main --config=train/configs/imagefolder_finetune.py --workdir=runs/mine \\
      --config.dataset='/path/to/photos?size=160&validation_split=0.1'
"""

import ml_collections

from train.configs import common

SCALE = "value_range(-0.9921875, 1)"  # (x - 127) / 128, as the pretrained weights expect


def get_config() -> ml_collections.ConfigDict:
  c = common.classification_config()
  c.dataset = "/path/to/photos?size=160&validation_split=0.1"  # set --config.dataset
  c.eval_split = "validation"
  c.model = ml_collections.ConfigDict({"name": "EfficientNetLite0"})
  c.pp_train = f"random_crop(160, pad=8)|flip_lr|{SCALE}"
  c.pp_eval = SCALE
  c.init_from = "imagenet"
  c.head = "^classifier/"
  c.backbone_lr_multiplier = 0.1
  c.batch_size = 32
  c.eval_batch_size = 64
  c.num_epochs = 10
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 50
  c.log_every_steps = 10
  return c
