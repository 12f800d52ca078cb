"""Object detection models: backbones, FPN and detectors (Flax Linen, static shapes).

Backbones return ``{level: NHWC map of stride 2**level}``; ``FPN`` maps that dict to levels
``min_level..max_level`` of equal channels; the detectors (``FCOS``, ``FasterRCNN``) follow
one contract (see ``fcos``'s module docstring): loss terms from ``model(images, targets,
train=True)``, padded detections from ``model(images, train=False)``.
:func:`create_detector` assembles one from a config-style spec.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from jaxvision.models.detection.backbones import (BACKBONES, ResNetBackbone, ResNetGN,
                                                  ResNetGNTiny, VGG16Backbone, create_backbone)
from jaxvision.models.detection.faster_rcnn import FasterRCNN
from jaxvision.models.detection.fcos import (FCOS, FCOSHead, default_size_ranges, fcos_decode,
                                             fcos_losses, fcos_points, fcos_targets)
from jaxvision.models.detection.fpn import FPN

__all__ = [
    "BACKBONES",
    "DETECTORS",
    "FCOS",
    "FCOSHead",
    "FPN",
    "FasterRCNN",
    "ResNetBackbone",
    "ResNetGN",
    "ResNetGNTiny",
    "VGG16Backbone",
    "create_backbone",
    "create_detector",
    "default_size_ranges",
    "fcos_decode",
    "fcos_losses",
    "fcos_points",
    "fcos_targets",
]

DETECTORS = {"FCOS": FCOS, "FasterRCNN": FasterRCNN}

_DEFAULT = object()


def create_detector(name: str, *, num_classes: int,
                    backbone: Mapping[str, Any] | nn.Module | None = None,
                    fpn: Mapping[str, Any] | nn.Module | None = _DEFAULT,  # type: ignore
                    dtype: Any = None, **kwargs) -> nn.Module:
  """Builds ``DETECTORS[name]`` from a config-style spec.

  Args:
    name: ``"FCOS"`` or ``"FasterRCNN"``.
    num_classes: foreground classes.
    backbone: ``{"name": ..., **keywords}`` for :func:`create_backbone`, or a module; default
      ``{"name": "resnet_gn"}``.
    fpn: keywords of :class:`FPN` (for FCOS ``min_level`` / ``max_level`` default to the
      detector's), a module, or None for no FPN (the backbone's levels as they are); default
      ``{}`` (an FPN with its defaults).
    dtype: the computation dtype; the detectors compute in float32, so only None or float32.
    **kwargs: the detector's own fields (``min_level``, ``head_channels``, ``rpn_*``, ...).

  Raises:
    ValueError: an unknown detector or backbone name, or a dtype other than float32.
  """
  if name not in DETECTORS:
    raise ValueError(f"unknown detector {name!r}; known detectors: {sorted(DETECTORS)}")
  if dtype is not None and jnp.dtype(dtype) != jnp.float32:
    raise ValueError(f"the detectors compute in float32; found dtype={jnp.dtype(dtype).name}")
  if backbone is None:
    backbone = {"name": "resnet_gn"}
  if not isinstance(backbone, nn.Module):
    spec = dict(backbone)
    if "name" not in spec:
      raise ValueError(f"backbone spec needs a 'name' (one of {sorted(BACKBONES)}); found "
                       f"{spec}")
    backbone = create_backbone(spec.pop("name"), **spec)
  if fpn is _DEFAULT:
    fpn = {}
  if fpn is not None and not isinstance(fpn, nn.Module):
    spec = dict(fpn)
    if name == "FCOS":
      spec.setdefault("min_level", kwargs.get("min_level", 3))
      spec.setdefault("max_level", kwargs.get("max_level", 5))
    fpn = FPN(**spec)
  return DETECTORS[name](num_classes=num_classes, backbone=backbone, fpn=fpn, **kwargs)
