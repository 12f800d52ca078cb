"""The tutorials' Faster R-CNN: a VGG16 backbone (conv5_3, stride 16), a single-level RPN
with nine anchors per location (sizes 128, 256, 512 x ratios 0.5, 1, 2, as in Ren et al.
2015), RoIAlign 7x7 and two 1024-wide FC layers, on a COCO folder.

The default dataset is ``tiny-coco`` under ``$JAXVISION_DATA_DIR``: a smoke test that runs on
a CPU (a few steps; its figures mean nothing). A real run needs COCO 2017 and an accelerator:
``--config.dataset=/path/to/coco2017 --config.num_epochs=12 --config.canvas_size=800``
(and ImageNet VGG16 weights from ``jaxvision.models.from_keras`` for the backbone).

  python -m train.main --config=train/configs/coco_faster_rcnn_vgg16.py --workdir=runs/coco_vgg
"""

import ml_collections

from train.configs import common


def get_config() -> ml_collections.ConfigDict:
  c = common.detection_config()
  c.dataset = "tiny-coco/small_coco"
  # tiny-coco has one split of 16 images: trained and evaluated on it (a smoke test). For COCO
  # 2017: train_split "train", eval_split and test_split "val".
  c.train_split = "train"
  c.eval_split = "train"
  c.test_split = "train"
  c.best_metric = "AP"
  c.canvas_size = 320
  c.max_boxes = 100
  c.scale_range = (0.8, 1.25)
  c.model = ml_collections.ConfigDict({
      "name": "FasterRCNN",
      "backbone": {"name": "vgg16"},
      "fpn": None,
      "rpn_anchor_sizes": ((128, 256, 512),),
      "rpn_aspect_ratios": (0.5, 1.0, 2.0),
      "rpn_conv_dim": 512,
      "rpn_pre_nms_top_k_train": 2000, "rpn_pre_nms_top_k_test": 1000,
      "rpn_post_nms_top_k_train": 512, "rpn_post_nms_top_k_test": 300,
      "box_batch_size_per_image": 128, "box_fc_dim": 1024, "box_num_fc": 2,
  })
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.01
  c.optimizer.warmup_steps = 10
  c.batch_size = 2
  c.eval_batch_size = 2
  c.num_epochs = 1
  c.log_every_steps = 5
  return c
