"""Object detection models: backbones, FPN and detectors (Flax Linen, static shapes).

Backbones return ``{level: NHWC map of stride 2**level}``; ``FPN`` maps that dict to levels
``min_level..max_level`` of equal channels; detectors follow the contract in ``fcos``'s module
docstring (detections or loss terms from one ``__call__``).
"""

from jaxvision.models.detection.backbones import (BACKBONES, ResNetBackbone, ResNetGN,
                                                  ResNetGNTiny, VGG16Backbone, create_backbone)
from jaxvision.models.detection.fcos import (FCOS, FCOSHead, default_size_ranges, fcos_decode,
                                             fcos_losses, fcos_points, fcos_targets)
from jaxvision.models.detection.fpn import FPN

__all__ = [
    "BACKBONES",
    "FCOS",
    "FCOSHead",
    "FPN",
    "ResNetBackbone",
    "ResNetGN",
    "ResNetGNTiny",
    "VGG16Backbone",
    "create_backbone",
    "default_size_ranges",
    "fcos_decode",
    "fcos_losses",
    "fcos_points",
    "fcos_targets",
]
