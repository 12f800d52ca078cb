"""jaxvision.ops: static-shape detection ops in pure ``jnp`` (no Flax).

Boxes, NMS, RoI Align, anchors, the box coder, the matcher and the balanced sampler. Boxes are
``xyxy`` in pixels unless a name says otherwise. Every op keeps shapes static (padded arrays
plus masks or counts) and works under ``jax.jit`` and ``jax.vmap``. (Convolution and pooling
for models: ``jaxvision.models.layers``.)
"""

from jaxvision.ops.anchors import cell_anchors
from jaxvision.ops.anchors import generate_anchors
from jaxvision.ops.anchors import num_anchors_per_location
from jaxvision.ops.box_coder import BBOX_XFORM_CLIP
from jaxvision.ops.box_coder import decode as decode_boxes
from jaxvision.ops.box_coder import encode as encode_boxes
from jaxvision.ops.boxes import BOX_FORMATS
from jaxvision.ops.boxes import box_area
from jaxvision.ops.boxes import box_convert
from jaxvision.ops.boxes import box_iou
from jaxvision.ops.boxes import clip_boxes
from jaxvision.ops.boxes import generalized_box_iou
from jaxvision.ops.boxes import small_box_mask
from jaxvision.ops.matcher import BELOW_LOW_THRESHOLD
from jaxvision.ops.matcher import BETWEEN_THRESHOLDS
from jaxvision.ops.matcher import match
from jaxvision.ops.matcher import match_boxes
from jaxvision.ops.nms import batched_nms
from jaxvision.ops.nms import nms
from jaxvision.ops.roi_align import assign_fpn_levels
from jaxvision.ops.roi_align import multilevel_roi_align
from jaxvision.ops.roi_align import roi_align
from jaxvision.ops.sampler import Samples
from jaxvision.ops.sampler import sample_balanced

__all__ = [
    "BBOX_XFORM_CLIP",
    "BELOW_LOW_THRESHOLD",
    "BETWEEN_THRESHOLDS",
    "BOX_FORMATS",
    "Samples",
    "assign_fpn_levels",
    "batched_nms",
    "box_area",
    "box_convert",
    "box_iou",
    "cell_anchors",
    "clip_boxes",
    "decode_boxes",
    "encode_boxes",
    "generalized_box_iou",
    "generate_anchors",
    "match",
    "match_boxes",
    "multilevel_roi_align",
    "nms",
    "num_anchors_per_location",
    "roi_align",
    "sample_balanced",
    "small_box_mask",
]
