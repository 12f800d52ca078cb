"""Faster R-CNN trained from scratch on BCCD, on a 2-core CPU.

The same GroupNorm ResNet + GroupNorm FPN (P3-P5) as ``bccd_fcos``, 384 px canvases. The RPN
has two anchor sizes per level sized for BCCD at 0.6x (platelets ~24 px, red cells ~60 px,
white cells ~110 px) and three aspect ratios; 300 proposals per image (BCCD has at most 30
objects); 128 RoIs per image at 25% foreground; multi-level RoIAlign 7x7 into a conv + FC
box head with GroupNorm. Model selection on val, the best checkpoint evaluated on test.
Figures: ``docs/RESULTS.md``.

  python -m train.main --config=train/configs/bccd_faster_rcnn.py --workdir=runs/bccd_frcnn
"""

import ml_collections

from train.configs import bccd_fcos


def get_config() -> ml_collections.ConfigDict:
  c = bccd_fcos.get_config()
  backbone = dict(c.model.backbone)
  c.model = ml_collections.ConfigDict({
      "name": "FasterRCNN",
      "backbone": backbone,
      "fpn": {"num_channels": 96, "norm": "group", "groups": 16, "min_level": 3,
              "max_level": 5},
      "rpn_anchor_sizes": ((16, 24), (48, 64), (96, 128)),
      "rpn_aspect_ratios": (0.5, 1.0, 2.0),
      "rpn_pre_nms_top_k_train": 1000, "rpn_pre_nms_top_k_test": 1000,
      "rpn_post_nms_top_k_train": 300, "rpn_post_nms_top_k_test": 300,
      "box_batch_size_per_image": 128, "box_positive_fraction": 0.25,
      "box_num_convs": 1, "box_conv_dim": 96, "box_num_groups": 16, "box_num_fc": 1,
      "box_fc_dim": 256,
      "score_threshold": 0.05, "nms_iou_threshold": 0.5, "max_detections": 100,
  })
  return c
