"""Feature Pyramid Network (Lin et al. 2017) with RetinaNet / FCOS extra levels.

``FPN(...)(features)`` takes a backbone's ``dict[int, Array]`` (level ``l`` -> NHWC map of
stride ``2**l``) and returns ``{l: [B, H / 2**l, W / 2**l, num_channels]}`` for
``l = min_level .. max_level``, float32.
"""

from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.models.detection.backbones import group_norm_groups
from jaxvision.models.layers import Conv

Array = jax.Array

NORMS = (None, "group")


def upsample_nearest(x: Array, shape: tuple[int, int]) -> Array:
  """Nearest-neighbour upsampling of ``x [B, h, w, C]`` to ``[B, *shape, C]``.

  An exact factor (``shape = (k * h, k * w)``) repeats each pixel ``k x k`` times (a broadcast,
  no gather); other sizes use ``jax.image.resize(..., 'nearest')``.
  """
  b, h, w, c = x.shape
  th, tw = shape
  if th % h == 0 and tw % w == 0 and th // h == tw // w:
    k = th // h
    if k == 1:
      return x
    y = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, k, w, k, c))
    return y.reshape(b, th, tw, c)
  return jax.image.resize(x, (b, th, tw, c), method="nearest")


class FPN(nn.Module):
  """Top-down feature pyramid.

  For the backbone levels ``l`` in ``[min_level, min(max_level, top)]`` (``top``: the
  backbone's highest level): a 1x1 lateral conv to ``num_channels``; from the top down, the
  merged map above is upsampled (nearest) and added; a 3x3 output conv gives ``P_l``. Levels
  above ``top`` up to ``max_level`` come from stride-2 3x3 convs: the first on ``P_top`` (as
  FCOS's P6 from P5's output), each next on ``relu`` of the previous (P7 from ``relu(P6)``).

  Attributes:
    num_channels: channels of every output level.
    min_level: lowest output level (the backbone must provide it).
    max_level: highest output level.
    norm: ``None`` (convs with bias) or ``"group"`` (GroupNorm with ``groups`` groups after
      every conv, convs without bias).
    groups: GroupNorm groups (clamped to divide ``num_channels``).

  Raises (when called):
    ValueError: a backbone level in ``[min_level, min(max_level, top)]`` is missing, or the
      backbone's highest level is below ``min_level``.
  """
  num_channels: int = 128
  min_level: int = 3
  max_level: int = 5
  norm: str | None = None
  groups: int = 32

  def _conv(self, x: Array, kernel: int, strides: int, name: str) -> Array:
    pad = ((kernel // 2, kernel // 2),) * 2
    x = Conv(self.num_channels, (kernel, kernel), (strides, strides), padding=pad,
             use_bias=self.norm is None, name=name)(x)
    if self.norm == "group":
      x = nn.GroupNorm(num_groups=group_norm_groups(self.num_channels, self.groups),
                       name=f"{name}_norm")(x)
    return x

  @nn.compact
  def __call__(self, features: Mapping[int, Array]) -> dict[int, Array]:
    if self.norm not in NORMS:
      raise ValueError(f"FPN norm must be one of {NORMS}; found {self.norm!r}")
    if self.max_level < self.min_level:
      raise ValueError(f"FPN needs min_level <= max_level; found {self.min_level} > "
                       f"{self.max_level}")
    available = sorted(int(k) for k in features)
    if not available or available[-1] < self.min_level:
      raise ValueError(f"FPN with min_level={self.min_level} needs backbone levels from "
                       f"{self.min_level}; found levels {available}")
    top = min(self.max_level, available[-1])
    needed = list(range(self.min_level, top + 1))
    missing = [level for level in needed if level not in features]
    if missing:
      raise ValueError(f"FPN levels {self.min_level}..{self.max_level} need backbone levels "
                       f"{needed}; found levels {available} (missing {missing})")
    out = {}
    merged = None
    for level in reversed(needed):
      lateral = self._conv(features[level].astype(jnp.float32), 1, 1, f"lateral_{level}")
      if merged is not None:
        lateral = lateral + upsample_nearest(merged, lateral.shape[1:3])
      merged = lateral
      out[level] = self._conv(merged, 3, 1, f"output_{level}")
    x = out[top]
    for level in range(top + 1, self.max_level + 1):
      x = self._conv(x if level == top + 1 else nn.relu(x), 3, 2, f"extra_{level}")
      out[level] = x
    return {level: out[level] for level in range(self.min_level, self.max_level + 1)}
