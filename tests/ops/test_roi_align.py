"""RoIAlign tests against a float64 loop reference of torchvision's CPU algorithm."""

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxvision import ops


def ref_bilinear(fmap, y, x):
  """torchvision bilinear_interpolate on one [H, W, C] map (float64)."""
  h, w = fmap.shape[:2]
  if y < -1.0 or y > h or x < -1.0 or x > w:
    return np.zeros(fmap.shape[-1])
  y, x = max(y, 0.0), max(x, 0.0)
  y_low, x_low = int(y), int(x)
  if y_low >= h - 1:
    y_high = y_low = h - 1
    y = float(y_low)
  else:
    y_high = y_low + 1
  if x_low >= w - 1:
    x_high = x_low = w - 1
    x = float(x_low)
  else:
    x_high = x_low + 1
  ly, lx = y - y_low, x - x_low
  hy, hx = 1.0 - ly, 1.0 - lx
  return (hy * hx * fmap[y_low, x_low] + hy * lx * fmap[y_low, x_high] +
          ly * hx * fmap[y_high, x_low] + ly * lx * fmap[y_high, x_high])


def ref_roi_align(features, boxes, batch_index, out_h, out_w, scale, sampling_ratio, aligned):
  features = np.asarray(features, np.float64)
  out = np.zeros((len(boxes), out_h, out_w, features.shape[-1]))
  offset = 0.5 if aligned else 0.0
  for k, (box, b) in enumerate(zip(np.asarray(boxes, np.float64), batch_index)):
    x1, y1, x2, y2 = box * scale - offset
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
      roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_h, bin_w = roi_h / out_h, roi_w / out_w
    grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out_h)
    grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out_w)
    count = max(grid_h * grid_w, 1)
    for ph in range(out_h):
      for pw in range(out_w):
        acc = np.zeros(features.shape[-1])
        for iy in range(grid_h):
          y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
          for ix in range(grid_w):
            x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
            acc += ref_bilinear(features[b], y, x)
        out[k, ph, pw] = acc / count
  return out


# Image-pixel boxes for a 64x48 (H x W) image; several lie partly or wholly outside.
BOXES = np.array([
    [4.0, 6.0, 30.0, 40.0],  # inside
    [-10.0, -6.0, 12.0, 9.0],  # over the top-left corner
    [40.0, 50.0, 60.0, 75.0],  # over the bottom-right corner
    [1.3, 2.7, 1.9, 3.1],  # smaller than a pixel
    [47.5, 63.5, 52.0, 70.0],  # on the last row/column and beyond
    [-30.0, -30.0, -12.0, -15.0],  # outside entirely
    [10.0, 10.0, 10.0, 10.0],  # degenerate
], np.float32)
INDEX = np.array([0, 1, 0, 1, 1, 0, 1], np.int32)


def features_for(scale, c=3, seed=0):
  h, w = int(64 * scale), int(48 * scale)
  return np.random.default_rng(seed).normal(size=(2, h, w, c)).astype(np.float32)


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
@pytest.mark.parametrize("aligned", [True, False])
def test_matches_reference(scale, sampling_ratio, aligned):
  feats = features_for(scale)
  out = ops.roi_align(feats, BOXES, INDEX, output_size=(3, 4), spatial_scale=scale,
                      sampling_ratio=sampling_ratio, aligned=aligned)
  ref = ref_roi_align(feats, BOXES, INDEX, 3, 4, scale, sampling_ratio, aligned)
  assert out.shape == (len(BOXES), 3, 4, 3)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
  assert np.abs(ref[5]).max() == 0.0 and np.abs(ref[0]).max() > 0.1


def test_adaptive_sampling_with_static_bound():
  feats = features_for(0.5)
  boxes = BOXES[:5]
  out = ops.roi_align(feats, boxes, INDEX[:5], output_size=2, spatial_scale=0.5,
                      sampling_ratio=0, max_sampling_ratio=10)
  ref = ref_roi_align(feats, boxes, INDEX[:5], 2, 2, 0.5, 0, True)
  grids = np.ceil((boxes[:, 2:] - boxes[:, :2]) * 0.5 / 2)
  assert grids.max() == 9 and grids.min() == 1  # a range of adaptive grids, all under the cap
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="max_sampling_ratio"):
    ops.roi_align(feats, boxes, INDEX[:5], output_size=2, sampling_ratio=0)


def test_batched_box_form_and_jit():
  feats = features_for(0.5)
  boxes = np.stack([BOXES[:3], BOXES[3:6]])  # [B=2, K=3, 4]
  fn = jax.jit(lambda f, b: ops.roi_align(f, b, output_size=2, spatial_scale=0.5))
  out = fn(feats, boxes)
  assert out.shape == (2, 3, 2, 2, 3)
  for b in range(2):
    ref = ref_roi_align(feats, boxes[b], [b] * 3, 2, 2, 0.5, 2, True)
    np.testing.assert_allclose(out[b], ref, atol=1e-5, rtol=1e-5)
  per_image = jax.vmap(lambda f, b: ops.roi_align(f[None], b, jnp.zeros(3, jnp.int32),
                                                  output_size=2, spatial_scale=0.5))
  np.testing.assert_allclose(per_image(feats, boxes), out, atol=1e-6)


def test_gradient_wrt_features():
  feats = jnp.asarray(features_for(0.25, c=2))
  fn = lambda f: ops.roi_align(f, BOXES[:5], INDEX[:5], output_size=2,  # noqa: E731
                               spatial_scale=0.25, sampling_ratio=2)
  # RoIAlign is linear in the features, so a large step has no truncation error.
  check_grads(fn, (feats,), order=1, modes=("fwd", "rev"), eps=1e-1, atol=1e-3, rtol=1e-3)
  # The vjp of a linear map is its transpose: compare with the float64 reference's weights.
  cot = np.random.default_rng(1).normal(size=(5, 2, 2, 2))
  grad = jax.grad(lambda f: jnp.sum(fn(f) * cot))(feats)
  # One-hot "features" with a channel per input position give d out / d feats in one call.
  b, h, w, c = feats.shape
  identity = np.eye(b * h * w).reshape(b, h, w, b * h * w)
  weight = ref_roi_align(identity, BOXES[:5], INDEX[:5], 2, 2, 0.25, 2, True)  # [K, 2, 2, BHW]
  basis_grad = np.einsum("kpqn,kpqc->nc", weight, cot).reshape(b, h, w, c)
  assert np.abs(basis_grad).max() > 0.1
  np.testing.assert_allclose(grad, basis_grad, atol=1e-5)


def test_assign_fpn_levels_formula():
  rng = np.random.default_rng(0)
  wh = np.exp(rng.uniform(np.log(4), np.log(2000), (200, 2)))
  xy = rng.uniform(0, 100, (200, 2))
  boxes = np.concatenate([xy, xy + wh], 1)
  boxes[0] = [0, 0, 224, 224]  # exactly canonical -> level 4
  boxes[1] = [0, 0, 112, 112]  # exactly one octave smaller -> level 3
  boxes[2] = [5, 5, 5, 5]  # degenerate -> k_min
  levels = np.asarray(ops.assign_fpn_levels(jnp.asarray(boxes, jnp.float32), 2, 5))
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  with np.errstate(divide="ignore"):
    ref = np.floor(4 + np.log2(np.sqrt(area) / 224.0) + 1e-6)
  ref = np.clip(ref, 2, 5)
  np.testing.assert_array_equal(levels, ref)
  assert levels[:3].tolist() == [4, 3, 2] and set(levels.tolist()) == {2, 3, 4, 5}


def test_multilevel_pools_each_box_from_its_level():
  rng = np.random.default_rng(3)
  scales = (1 / 4, 1 / 8, 1 / 16)
  feats = [rng.normal(size=(2, 128 // int(1 / s), 96 // int(1 / s), 2)).astype(np.float32)
           for s in scales]
  boxes = np.array([[5, 5, 40, 50], [10, 20, 200, 220], [0, 0, 90, 120], [30, 8, 95, 127],
                    [1, 1, 3, 3]], np.float32)
  index = np.array([0, 1, 1, 0, 1], np.int32)
  out = jax.jit(lambda f, b, i: ops.multilevel_roi_align(
      f, b, i, output_size=(2, 3), spatial_scales=scales, canonical_scale=64,
      canonical_level=3))(feats, boxes, index)
  eager = ops.multilevel_roi_align(feats, boxes, index, output_size=[2, 3],
                                   spatial_scales=list(scales), canonical_scale=64,
                                   canonical_level=3)  # lists are fine outside jit too
  np.testing.assert_allclose(eager, out, atol=1e-6)
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  levels = np.clip(np.floor(3 + np.log2(np.sqrt(area) / 64) + 1e-6), 2, 4).astype(int)
  assert len(set(levels.tolist())) == 3  # the boxes cover every level
  for k in range(len(boxes)):
    lvl = levels[k] - 2
    ref = ref_roi_align(feats[lvl], boxes[k:k + 1], index[k:k + 1], 2, 3, scales[lvl], 2, True)
    np.testing.assert_allclose(out[k], ref[0], atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="consecutive pyramid levels"):
    ops.multilevel_roi_align(feats, boxes, index, output_size=2, spatial_scales=(1 / 4, 1 / 16,
                                                                                   1 / 8))


def test_bad_inputs_raise():
  feats = features_for(1.0)
  with pytest.raises(ValueError, match="NHWC"):
    ops.roi_align(feats[0], BOXES, INDEX, output_size=2)
  with pytest.raises(ValueError, match=r"\[B, K, 4\]"):
    ops.roi_align(feats, BOXES, output_size=2)
  with pytest.raises(ValueError, match="box_batch_index"):
    ops.roi_align(feats, BOXES, INDEX[:3], output_size=2)
  with pytest.raises(ValueError, match="output_size"):
    ops.roi_align(feats, BOXES, INDEX, output_size=(2, 0))


# --- Exact cases (issue: adaptive sample count, samples on the map's edge) -----------------------
# Expected values by hand, and the float64 loop reference above for the whole output.


def x_squared_map(size=32):
  """[1, size, size, 1] map with f[y, x] = x**2."""
  x = np.arange(size, dtype=np.float32) ** 2
  return np.broadcast_to(x[None, None, :, None], (1, size, size, 1)).copy()


def _call_modes():
  """roi_align called eagerly (op by op), through its own jit, and inside an outer jit."""

  def eager(*args, **kw):
    with jax.disable_jit():
      return ops.roi_align(*args, **kw)

  def outer_jit(feats, boxes, index, **kw):  # boxes are constants there (XLA folds them)
    return jax.jit(lambda f: ops.roi_align(f, boxes, index, **kw))(feats)

  return {"eager": eager, "jit": ops.roi_align, "outer_jit": outer_jit}


@pytest.mark.parametrize("mode", ["eager", "jit", "outer_jit"])
def test_adaptive_count_at_exact_integer_ratio(mode):
  call = _call_modes()[mode]
  feats = x_squared_map()
  # 21 / 7 = 3 samples per bin (torchvision: 3.16667); 4 samples would give 3.125.
  # (The cap of 4 leaves room for the wrong count.)
  out = call(feats, np.array([[0, 0, 21, 21]], np.float32), np.zeros(1, np.int32),
             output_size=7, sampling_ratio=-1, max_sampling_ratio=4, aligned=False)
  # Samples at x = 0.5, 1.5, 2.5: bilinear on x**2 gives 0.5, 2.5, 6.5; their mean is 19/6.
  np.testing.assert_allclose(out[0, 0, 0, 0], 19 / 6, rtol=1e-6)
  if mode != "jit":
    return  # the cases below once suffice
  # RoI sizes that are exact multiples of the output size (h, w separately), two outputs.
  for out_hw, sizes in (((7, 7), [(7, 7), (14, 21), (21, 28), (28, 7)]),
                        ((3, 5), [(12, 15), (6, 10), (9, 20)])):
    boxes = np.array([[1, 2, 1 + w, 2 + h] for h, w in sizes], np.float32)
    index = np.zeros(len(boxes), np.int32)
    got = call(feats, boxes, index, output_size=out_hw, sampling_ratio=0, max_sampling_ratio=5,
               aligned=False)
    ref = ref_roi_align(feats, boxes, index, *out_hw, 1.0, 0, False)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=f"{out_hw}")


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_div_exact_is_correctly_rounded(mode):
  rng = np.random.default_rng(0)
  a = np.concatenate([np.arange(-300, 3000, dtype=np.float32) * np.float32(0.25),
                      rng.uniform(-1e3, 1e3, 20000).astype(np.float32),
                      rng.uniform(0, 1e-3, 2000).astype(np.float32)])
  from jaxvision.ops.roi_align import div_exact
  for n in (1, 2, 3, 5, 7, 12, 14, 49, 4095):
    fn = (lambda a: div_exact(a, n)) if mode == "eager" else jax.jit(lambda a: div_exact(a, n))
    ctx = jax.disable_jit() if mode == "eager" else contextlib.nullcontext()
    with ctx:
      got = np.asarray(fn(a))
    np.testing.assert_array_equal(got, a / np.float32(n), err_msg=f"n={n}")  # IEEE division
  per_element = jax.jit(div_exact)(a[:7], np.arange(1, 8).astype(np.float32))
  np.testing.assert_array_equal(per_element, a[:7] / np.arange(1, 8).astype(np.float32))


ONES = np.ones((1, 4, 4, 1), np.float32)
# (box, output bin (row, col), expected value) on a 4x4 map of ones; output 7, sampling 2,
# aligned. A sample at exactly -1 or exactly H/W reads the edge value (weight 1); beyond, 0.
EDGE_CASES = [
    ([0, 0, 42, 4], (0, 0), 1.0),  # x samples 1.0 and 4.0 == W (the case)
    ([0, 0, 4, 42], (0, 0), 1.0),  # y samples 1.0 and 4.0 == H
    ([0, 0, 42.7, 4], (0, 0), 0.5),  # x = 4.075 > W: weight 0
    ([-9, 0, 5, 4], (0, 6), 1.0),  # last column's samples at x = 3.0 and 4.0 == W
    ([0, -9, 4, 5], (6, 0), 1.0),  # last row's samples at y = 3.0 and 4.0 == H
    ([-9, 0, 5, 4], (0, 0), 0.0),  # x = -9, -8: outside
    ([-1, 0, 13, 4], (0, 0), 1.0),  # x samples -1.0 (clamped to 0) and 0.0
    ([0, -1, 4, 13], (0, 0), 1.0),  # y samples -1.0 and 0.0
    ([-1.25, 0, 12.75, 4], (0, 0), 0.5),  # x = -1.25 < -1: weight 0
    ([0, -1.25, 4, 12.75], (0, 0), 0.5),  # y = -1.25 < -1
]


@pytest.mark.parametrize("mode", ["eager", "jit", "outer_jit"])
def test_samples_on_the_map_edges(mode):
  call = _call_modes()[mode]
  boxes = np.array([c[0] for c in EDGE_CASES], np.float32)
  index = np.zeros(len(boxes), np.int32)
  out = np.asarray(call(ONES, boxes, index, output_size=7, sampling_ratio=2, aligned=True))
  for k, (box, (r, c), value) in enumerate(EDGE_CASES):
    assert out[k, r, c, 0] == pytest.approx(value, abs=1e-6), (box, out[k, r, c, 0])
  ref = ref_roi_align(ONES, boxes, index, 7, 7, 1.0, 2, True)
  np.testing.assert_allclose(out, ref, atol=1e-6)
  # The same on a non-constant map, and on the far edge of a 2-image batch's second image.
  feats = np.random.default_rng(5).normal(size=(2, 4, 4, 3)).astype(np.float32)
  index = np.arange(len(boxes), dtype=np.int32) % 2
  out = call(feats, boxes, index, output_size=7, sampling_ratio=2, aligned=True)
  np.testing.assert_allclose(out, ref_roi_align(feats, boxes, index, 7, 7, 1.0, 2, True),
                             atol=1e-5, rtol=1e-5)


def test_gradient_wrt_boxes_matches_finite_differences():
  feats = features_for(0.25, c=2)  # [2, 16, 12, 2]
  boxes = np.array([[4.3, 6.1, 30.7, 40.2], [10.2, 3.3, 25.9, 17.6], [2.1, 30.4, 44.6, 61.3]],
                   np.float32)
  index = np.array([0, 1, 1], np.int32)
  cot = np.random.default_rng(2).normal(size=(3, 2, 3, 2))

  def loss(f, b):
    out = ops.roi_align(f, b, index, output_size=(2, 3), spatial_scale=0.25, sampling_ratio=2)
    return jnp.sum(out * cot)

  grad_f, grad_b = jax.grad(loss, argnums=(0, 1))(jnp.asarray(feats), jnp.asarray(boxes))
  ref = lambda b: np.sum(ref_roi_align(feats, b, index, 2, 3, 0.25, 2, True) * cot)  # noqa
  eps, fd = 1e-4, np.zeros((3, 4))
  for k in range(3):
    for j in range(4):
      step = np.zeros((3, 4))
      step[k, j] = eps
      fd[k, j] = (ref(boxes + step) - ref(boxes - step)) / (2 * eps)
  assert np.abs(fd).max() > 0.05
  np.testing.assert_allclose(grad_b, fd, rtol=2e-3, atol=2e-3)
  # The feature gradient is the same with or without the box gradient asked for.
  np.testing.assert_allclose(grad_f, jax.grad(loss)(jnp.asarray(feats), boxes), atol=1e-6)


def test_backward_memory_stays_near_the_output_size():
  # The vjp runs over chunks of RoIs: its scratch memory is about one output, not one gathered
  # value per tap (16 outputs at sampling_ratio 2).
  k, c = 256, 32
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 100, (k, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(4, 60, (k, 2))], 1).astype(np.float32)
  index = (np.arange(k) % 2).astype(np.int32)

  def fwd_bwd(f, cot):
    out, vjp = jax.vjp(lambda f: ops.roi_align(f, boxes, index, output_size=7,
                                               spatial_scale=0.25), f)
    return out, vjp(cot)[0]

  args = (jax.ShapeDtypeStruct((2, 32, 32, c), jnp.float32),
          jax.ShapeDtypeStruct((k, 7, 7, c), jnp.float32))
  memory = jax.jit(fwd_bwd).lower(*args).compile().memory_analysis()
  if memory is None:
    pytest.skip("this backend reports no memory analysis")
  output_bytes = k * 7 * 7 * c * 4
  assert memory.temp_size_in_bytes < 3 * output_bytes, memory.temp_size_in_bytes / output_bytes


def test_matches_torchvision_forward_and_backward():
  # An extra cross-check against torchvision's own kernel (the exact cases above need no torch).
  torch = pytest.importorskip("torch")
  tv_ops = pytest.importorskip("torchvision.ops")
  rng = np.random.default_rng(4)
  feats = rng.normal(size=(2, 20, 24, 5)).astype(np.float32)
  xy = rng.uniform(-10, 44, (40, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(0, 30, (40, 2))], 1)
  boxes[:6] = [[0, 0, 21, 21], [0, 0, 42, 4], [-9, 0, 5, 4], [-1, -1, 13, 13], [3, 3, 3, 3],
               [5, 6, 5.5, 6.2]]  # exact ratios, edges, degenerate, sub-pixel
  boxes = boxes.astype(np.float32)
  index = rng.integers(0, 2, 40).astype(np.int32)
  t_feats = torch.from_numpy(feats).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
  t_boxes = torch.from_numpy(np.concatenate([index[:, None], boxes], 1).astype(np.float32))
  for aligned, sampling in ((True, 2), (False, 1), (True, -1)):
    kw = dict(output_size=(3, 4), spatial_scale=0.5, sampling_ratio=sampling, aligned=aligned)
    cap = None if sampling > 0 else int(np.ceil(np.abs(boxes[:, 2:] - boxes[:, :2]).max() *
                                                0.5 / 3))  # just enough, as static bound
    cot = rng.normal(size=(40, 3, 4, 5)).astype(np.float32)
    out, vjp = jax.vjp(lambda f: ops.roi_align(f, boxes, index, max_sampling_ratio=cap, **kw),
                       jnp.asarray(feats))
    t_out = tv_ops.roi_align(t_feats, t_boxes, kw["output_size"], kw["spatial_scale"],
                             sampling, aligned)
    t_feats.grad = None
    t_out.backward(torch.from_numpy(cot).permute(0, 3, 1, 2))
    np.testing.assert_allclose(out, t_out.detach().permute(0, 2, 3, 1).numpy(), atol=1e-5,
                               rtol=1e-5, err_msg=f"aligned={aligned} sampling={sampling}")
    np.testing.assert_allclose(vjp(jnp.asarray(cot))[0],
                               t_feats.grad.permute(0, 2, 3, 1).numpy(), atol=1e-5, rtol=1e-5)
