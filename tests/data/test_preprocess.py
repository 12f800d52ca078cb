"""Preprocessing ops, eagerly and inside tf.data, against NumPy references."""

import itertools
import math

import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from jaxvision.data import preprocess


def _rng(i):
  return tf.constant([7, i], tf.int64)


def run_both(op, image, rng):
  """Runs ``op`` eagerly and inside a tf.data map; asserts they agree; returns the NumPy image.

  ``rng`` is one key ``[2]`` or a stack of keys ``[R, 2]`` (then the result is ``[R, ...]``,
  computed by a single tf.data pipeline).
  """
  rngs = tf.reshape(tf.convert_to_tensor(rng), [-1, 2])
  features = {"image": tf.constant(image), "label": tf.constant(3)}
  eager = [op(features, r) for r in rngs]
  ds = tf.data.Dataset.from_tensor_slices(rngs).map(lambda r: op(features, r))
  graph = list(ds)
  for e, g in zip(eager, graph):
    assert int(e["label"]) == 3 and int(g["label"]) == 3
    assert e["image"].dtype == g["image"].dtype
    np.testing.assert_array_equal(e["image"].numpy(), g["image"].numpy())
  out = np.stack([e["image"].numpy() for e in eager])
  return out if len(tf.convert_to_tensor(rng).shape) == 2 else out[0]


def _rngs(n):
  return tf.stack([_rng(i) for i in range(n)])


def _image(shape, dtype=np.uint8, seed=0):
  rng = np.random.default_rng(seed)
  if dtype == np.uint8:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)
  return rng.uniform(0, 1, size=shape).astype(dtype)


def test_value_range_exact():
  image = _image((5, 4, 1))
  out = run_both(preprocess.parse("value_range(-1, 1)"), image, _rng(0))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, -1.0 + image.astype(np.float64) * 2.0 / 255.0, atol=1e-6)
  out = run_both(preprocess.parse("value_range(0, 1, 0, 100, clip_values=True)"), image, _rng(0))
  np.testing.assert_allclose(out, np.clip(image / 100.0, 0, 1), atol=1e-6)


def test_normalize_scalar_and_per_channel():
  grey = _image((4, 4, 1))
  out = run_both(preprocess.parse("normalize(0.1307, 0.3081)"), grey, _rng(0))
  np.testing.assert_allclose(out, (grey / 255.0 - 0.1307) / 0.3081, rtol=1e-5, atol=1e-5)
  rgb = _image((3, 5, 3))
  mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
  spec = f"value_range(0, 1)|normalize({mean}, {std})"
  out = run_both(preprocess.parse(spec), rgb, _rng(0))
  ref = (rgb / 255.0 - np.array(mean)) / np.array(std)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="3 values but the image has 1 channels"):
    preprocess.parse(f"normalize({mean}, {std})")({"image": tf.constant(grey)}, _rng(0))


def test_flip_lr_exact_and_random():
  image = _image((3, 5, 2))
  op = preprocess.parse("flip_lr")
  flipped = 0
  for out in run_both(op, image, _rngs(40)):
    if np.array_equal(out, image[:, ::-1]):
      flipped += 1
    else:
      np.testing.assert_array_equal(out, image)
  assert 8 <= flipped <= 32  # p = 0.5: outside this range has probability < 1e-4
  np.testing.assert_array_equal(run_both(preprocess.parse("flip_lr(p=1.0)"), image, _rng(0)),
                                image[:, ::-1])
  np.testing.assert_array_equal(run_both(preprocess.parse("flip_lr(0.0)"), image, _rng(0)), image)


def test_random_crop_is_a_window_of_the_padded_image():
  image = _image((6, 6, 1))
  padded = np.pad(image, [(1, 1), (1, 1), (0, 0)])
  op = preprocess.parse("random_crop(6, pad=1)")
  seen = set()
  for i, out in enumerate(run_both(op, image, _rngs(120))):
    assert out.shape == (6, 6, 1) and out.dtype == np.uint8
    matches = [(dy, dx) for dy, dx in itertools.product(range(3), range(3))
               if np.array_equal(out, padded[dy:dy + 6, dx:dx + 6])]
    assert matches, f"rng {i}: crop is not a window of the padded image"
    seen.update(matches)
  assert seen == set(itertools.product(range(3), range(3)))  # every offset is reachable
  out = run_both(preprocess.parse("random_crop((2, 3))"), _image((4, 5, 3)), _rng(1))
  assert out.shape == (2, 3, 3)
  with pytest.raises(ValueError, match="larger than the image"):
    preprocess.parse("random_crop(8)")({"image": tf.constant(image)}, _rng(0))


def test_center_crop_exact():
  image = _image((7, 6, 2))
  out = run_both(preprocess.parse("center_crop((4, 3))"), image, _rng(0))
  np.testing.assert_array_equal(out, image[1:5, 1:4])


def test_grayscale_to_rgb_exact():
  image = _image((3, 4, 1))
  out = run_both(preprocess.parse("grayscale_to_rgb"), image, _rng(0))
  np.testing.assert_array_equal(out, np.concatenate([image] * 3, axis=-1))
  rgb = _image((3, 4, 3))
  np.testing.assert_array_equal(run_both(preprocess.parse("grayscale_to_rgb"), rgb, _rng(0)), rgb)


def _bilinear_resize_ref(image, out_h, out_w):
  """Half-pixel-centre bilinear resize (tf.image.resize, antialias=False) in float64."""
  in_h, in_w = image.shape[:2]

  def coords(out_n, in_n):
    x = (np.arange(out_n) + 0.5) * (in_n / out_n) - 0.5
    x0 = np.floor(x).astype(int)
    frac = x - x0
    return np.clip(x0, 0, in_n - 1), np.clip(x0 + 1, 0, in_n - 1), frac

  y0, y1, fy = coords(out_h, in_h)
  x0, x1, fx = coords(out_w, in_w)
  img = image.astype(np.float64)
  top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
  bot = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
  return top * (1 - fy)[:, None, None] + bot * fy[:, None, None]


@pytest.mark.parametrize("in_hw,out_hw", [((5, 7), (11, 4)), ((8, 8), (3, 3)), ((4, 4), (32, 32))])
def test_resize_bilinear_against_numpy(in_hw, out_hw):
  image = _image(in_hw + (2,), np.float32)
  out = run_both(preprocess.parse(f"resize({out_hw})"), image, _rng(0))
  assert out.dtype == np.float32 and out.shape == out_hw + (2,)
  np.testing.assert_allclose(out, _bilinear_resize_ref(image, *out_hw), atol=1e-5)
  image8 = _image(in_hw + (1,))
  out8 = run_both(preprocess.parse(f"resize({out_hw})"), image8, _rng(0))
  assert out8.dtype == np.uint8
  ref8 = np.clip(np.round(_bilinear_resize_ref(image8, *out_hw)), 0, 255)
  assert np.abs(out8.astype(int) - ref8).max() <= 1


def test_resize_other_methods_follow_tf_image_resize():
  image = _image((6, 9, 1), np.float32)
  out = run_both(preprocess.parse("resize(4, method='nearest')"), image, _rng(0))
  np.testing.assert_array_equal(out, tf.image.resize(image, (4, 4), method="nearest").numpy())
  with pytest.raises(ValueError, match="method"):
    preprocess.parse("resize(4, method='magic')")


@pytest.mark.parametrize("in_hw,out_hw", [((6, 9), (4, 6)), ((9, 6), (6, 4)), ((5, 7), (10, 14)),
                                           ((3, 10), (4, 13))])
def test_resize_small_keeps_the_aspect_ratio(in_hw, out_hw):
  image = _image((*in_hw, 1), np.float32)
  size = min(out_hw)
  out = run_both(preprocess.parse(f"resize_small({size})"), image, _rng(0))
  assert out.shape == (*out_hw, 1)  # longer side: round(longer * size / shorter)
  np.testing.assert_allclose(out, _bilinear_resize_ref(image, *out_hw), atol=1e-5)
  with pytest.raises(ValueError, match="positive int"):
    preprocess.parse("resize_small((4, 5))")


def _rotate_ref(image, angle):
  """Counter-clockwise (as displayed) rotation about the centre, bilinear, zeros outside."""
  h, w = image.shape[:2]
  cy, cx = (h - 1) / 2, (w - 1) / 2
  out = np.zeros(image.shape, np.float64)
  img = image.astype(np.float64)
  for y in range(h):
    for x in range(w):
      # Inverse map: rotate the output offset by +angle in (x, y-down) coordinates.
      xs = math.cos(angle) * (x - cx) - math.sin(angle) * (y - cy) + cx
      ys = math.sin(angle) * (x - cx) + math.cos(angle) * (y - cy) + cy
      x0, y0 = math.floor(xs), math.floor(ys)
      acc = np.zeros(image.shape[2])
      for yy, wy in ((y0, 1 - (ys - y0)), (y0 + 1, ys - y0)):
        for xx, wx in ((x0, 1 - (xs - x0)), (x0 + 1, xs - x0)):
          if 0 <= yy < h and 0 <= xx < w:
            acc += wy * wx * img[yy, xx]
      out[y, x] = acc
  return out


def test_rotate_image_against_numpy_and_scipy():
  image = _image((9, 11, 1), np.float32)
  angle = math.radians(17.0)
  out = preprocess.rotate_image(tf.constant(image), angle).numpy()
  interior = (slice(2, -2), slice(2, -2))
  np.testing.assert_allclose(out[interior], _rotate_ref(image, angle)[interior], atol=1e-4)
  # scipy.ndimage.rotate turns counter-clockwise as displayed for positive angles.
  ref = scipy.ndimage.rotate(image, 17.0, axes=(1, 0), reshape=False, order=1, mode="constant")
  np.testing.assert_allclose(out[interior], ref[interior], atol=1e-4)
  # 90 degrees: a dot right of the centre moves above it.
  dot = np.zeros((5, 5, 1), np.float32)
  dot[2, 4] = 1.0
  np.testing.assert_allclose(preprocess.rotate_image(tf.constant(dot), math.pi / 2).numpy()[0, 2],
                             [1.0], atol=1e-5)


def test_rotate_op_draws_angle_uniformly_in_range():
  image = _image((8, 8, 1), np.float32)
  op = preprocess.get_op("rotate")(30)  # called with rng directly: documented draw
  for i, out in enumerate(run_both(op, image, _rngs(3))):
    rng = _rng(i)
    u = float(tf.random.stateless_uniform([], seed=rng, alg="philox"))
    angle = math.radians(30 * (2 * u - 1))
    interior = (slice(2, -2), slice(2, -2))
    np.testing.assert_allclose(out[interior], _rotate_ref(image, angle)[interior], atol=1e-4)
  out8 = run_both(op, _image((8, 8, 1)), _rng(0))
  assert out8.dtype == np.uint8


def test_parse_composes_with_split_keys():
  image = _image((10, 10, 1))
  spec = "random_crop(8, pad=1)|flip_lr|rotate(15)|value_range(0, 1)"
  rng = _rng(5)
  out = run_both(preprocess.parse(spec), image, rng)
  keys = tf.random.experimental.stateless_split(rng, num=4, alg="philox")
  features = {"image": tf.constant(image)}
  for i, op in enumerate([preprocess.get_op("random_crop")(8, pad=1), preprocess.get_op("flip_lr")(),
                          preprocess.get_op("rotate")(15), preprocess.get_op("value_range")(0, 1)]):
    features = op(features, keys[i])
  np.testing.assert_array_equal(out, features["image"].numpy())
  assert out.shape == (8, 8, 1) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
  np.testing.assert_array_equal(run_both(preprocess.parse(""), image, rng), image)


@pytest.mark.parametrize("spec,message", [
    ("value_range(0, 1)|shear(3)", "registered ops: .*normalize.*rotate"),
    ("resize(size)", "literals"),
    ("resize(__import__('os').getcwd())", "literals"),
    ("resize(3", "cannot parse"),
    ("flip_lr(1, 2, 3)", "bad arguments"),
    ("flip_lr||value_range(0, 1)", "empty op"),
    ("resize(-2)", "positive int"),
])
def test_parse_errors(spec, message):
  with pytest.raises(ValueError, match=message):
    preprocess.parse(spec)


def test_register_new_op():
  @preprocess.register("test_add_one")
  def add_one():
    return lambda features, rng: {**features, "image": features["image"] + 1}

  assert "test_add_one" in preprocess.registered_ops()
  out = run_both(preprocess.parse("test_add_one|value_range(0, 255)"), _image((2, 2, 1)), _rng(0))
  np.testing.assert_array_equal(out, _image((2, 2, 1)).astype(np.float32) + 1)
  with pytest.raises(ValueError, match="already registered"):
    preprocess.register("test_add_one")(lambda: None)
