"""Anchor generator tests against a loop reference of torchvision's AnchorGenerator rules."""

import math

import numpy as np
import pytest

from jaxvision import ops


def ref_anchors(feature_map_sizes, strides, sizes, ratios):
  """Anchors built one by one: level, row, column, ratio, size."""
  out = []
  for (h, w), stride, level_sizes, level_ratios in zip(feature_map_sizes, strides, sizes, ratios):
    for y in range(h):
      for x in range(w):
        for r in level_ratios:
          for s in level_sizes:
            bw, bh = s / math.sqrt(r), s * math.sqrt(r)
            cell = np.round(np.array([-bw, -bh, bw, bh]) / 2)
            out.append(cell + [x * stride, y * stride, x * stride, y * stride])
  return np.array(out)


def test_matches_reference_two_levels():
  sizes = ((32, 48), (64,))
  ratios = ((0.5, 1.0, 2.0), (1.0, 3.0))
  maps, strides = [(3, 4), (2, 2)], [8, 16]
  anchors = ops.generate_anchors(maps, strides, sizes, ratios)
  ref = ref_anchors(maps, strides, sizes, ratios)
  assert anchors.shape == (3 * 4 * 6 + 2 * 2 * 2, 4)
  np.testing.assert_allclose(anchors, ref, atol=1e-4)
  assert ops.num_anchors_per_location(sizes, ratios, 2) == [6, 2]


def test_flat_arguments_and_known_values():
  anchors = np.asarray(ops.generate_anchors([(1, 2), (1, 1)], [16, 32], (32, 64), (0.5, 1.0, 2.0)))
  # torchvision cell anchors for size 32: ratio 0.5 -> w 45.25, h 22.63 -> round(+-22.6, +-11.3).
  np.testing.assert_allclose(anchors[0], [-23, -11, 23, 11])
  np.testing.assert_allclose(anchors[1], [-16, -16, 16, 16])
  np.testing.assert_allclose(anchors[3], [16 - 23, -11, 16 + 23, 11])  # next column, +stride
  np.testing.assert_allclose(anchors[6:], ref_anchors([(1, 1)], [32], [(64,)], [(0.5, 1, 2)]))


def test_bad_arguments():
  with pytest.raises(ValueError, match="one stride per feature map"):
    ops.generate_anchors([(2, 2)], [8, 16], (32,), (1.0,))
  with pytest.raises(ValueError, match="sizes"):
    ops.generate_anchors([(2, 2), (1, 1)], [8, 16], ((32,),), (1.0,))
  with pytest.raises(ValueError, match="positive"):
    ops.generate_anchors([(2, 2)], [8], (32,), (0.0,))
