"""FCOS trained from scratch on BCCD (blood cells: RBC, WBC, Platelets), on a 2-core CPU.

A small GroupNorm ResNet (``resnet_gn``) with a GroupNorm FPN over P3-P5 (strides 8, 16, 32:
platelets, red cells, white cells) and 96-channel shared towers; 384 px canvases (BCCD's
640x480 images at 0.6x), left-right and up-down flips (cells have no orientation) and scale
jitter. Model selection on val (VOC mAP50), the best checkpoint evaluated on test.
Figures (time, mAP50 per class): ``docs/RESULTS.md``.

  python -m train.main --config=train/configs/bccd_fcos.py --workdir=runs/bccd_fcos
"""

import ml_collections

from train.configs import common


def get_config() -> ml_collections.ConfigDict:
  c = common.detection_config()
  c.dataset = "bccd/BCCD"
  c.canvas_size = 384
  c.max_boxes = 64  # BCCD has at most 30 objects per image
  c.scale_range = (0.8, 1.25)
  c.flip_prob = 0.5
  c.vflip_prob = 0.5
  c.model = ml_collections.ConfigDict({
      "name": "FCOS",
      "backbone": {"name": "resnet_gn", "stage_sizes": (1, 2, 2, 1),
                   "widths": (32, 64, 128, 256), "groups": 8},
      "fpn": {"num_channels": 96, "norm": "group", "groups": 16},
      "min_level": 3, "max_level": 5,
      "head_channels": 96, "num_convs": 3, "head_groups": 16,
      "pre_nms_top_k": 1000, "score_threshold": 0.05, "nms_iou_threshold": 0.6,
      "max_detections": 100,
  })
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 150
  c.optimizer.weight_decay = 5e-4
  c.batch_size = 8
  c.eval_batch_size = 8
  c.num_epochs = 40  # 25 steps per epoch
  c.eval_every_steps = 125  # every 5 epochs
  c.log_every_steps = 25
  return c
