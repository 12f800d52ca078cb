"""Detection preprocessing: boxes follow the pixels, static shapes, padding and warnings.

References are NumPy float64 computations written here from the documented transform
(fit-to-canvas scale, flip x -> W - x, crop offset, clip), and the image content itself: a
bright rectangle drawn at a box must stay under the transformed box.
"""

import warnings

import numpy as np
import pytest
import tensorflow as tf

from jaxvision.data import detection as det


def make_arrays(h, w, boxes, labels):
  """Black uint8 image with white rectangles at integer xyxy ``boxes``; normalized yxyx boxes."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  image = np.zeros((h, w, 3), np.uint8)
  for x1, y1, x2, y2 in boxes.astype(int):
    image[y1:y2, x1:x2] = 255
  yxyx = boxes[:, [1, 0, 3, 2]] / np.array([h, w, h, w])
  return image, yxyx.astype(np.float32), np.asarray(labels, np.int64)


def make_example(h, w, boxes, labels, *, image_id=7, crowd=None):
  """A TFDS-like element (see ``make_arrays``)."""
  image, yxyx, labels = make_arrays(h, w, boxes, labels)
  objects = {"bbox": tf.constant(yxyx), "label": tf.constant(labels)}
  if crowd is not None:
    objects["is_crowd"] = tf.constant(crowd, tf.bool)
  return {"image": tf.constant(image), "image/id": tf.constant(image_id, tf.int64),
          "objects": objects}


def ref_place(boxes, h, w, *, size, scale=1.0, fraction=(0.0, 0.0)):
  """NumPy float64 reference of resize_crop_pad for boxes: (boxes, (sy, sx), (oy, ox))."""
  fit = size / max(h, w)
  exact = np.array([h, w], np.float64) * fit * scale
  assert np.all(np.abs(exact - np.floor(exact) - 0.5) > 1e-3), "pick sizes away from x.5"
  new = np.maximum(np.round(exact), 1).astype(int)
  excess = np.maximum(new - size, 0)
  offset = np.minimum(np.floor(np.asarray(fraction) * (excess + 1)).astype(int), excess)
  sy, sx = new / np.array([h, w])
  out = np.asarray(boxes, np.float64) * [sx, sy, sx, sy] - offset[[1, 0, 1, 0]]
  extent = np.minimum(new - offset, size)
  out = np.clip(out, 0, extent[[1, 0, 1, 0]])
  return out, np.array([sy, sx]), offset


def pixel_centers(size):
  return np.arange(size) + 0.5


def assert_content_under_boxes(canvas, boxes, *, margin=1.5):
  """Pixels well inside every box are bright; pixels well outside all boxes are dark."""
  gray = np.asarray(canvas).mean(-1)
  yy, xx = np.meshgrid(pixel_centers(gray.shape[0]), pixel_centers(gray.shape[1]), indexing="ij")
  outside = np.ones_like(gray, bool)
  for x1, y1, x2, y2 in np.asarray(boxes):
    inner = (xx > x1 + margin) & (xx < x2 - margin) & (yy > y1 + margin) & (yy < y2 - margin)
    assert inner.any(), "box too small for a content check"
    assert gray[inner].min() > 0.9, f"dark pixel inside box {(x1, y1, x2, y2)}"
    outside &= ~((xx > x1 - margin) & (xx < x2 + margin) & (yy > y1 - margin) & (yy < y2 + margin))
  assert gray[outside].max() < 0.1, "bright pixel outside every box"


def test_from_tfds_converts_normalized_yxyx_to_pixel_xyxy_and_skips_crowd():
  boxes = np.array([[10, 5, 30, 25], [0, 0, 64, 48], [40, 10, 50, 40]], np.float64)
  ex = make_example(48, 64, boxes, [2, 0, 1], crowd=[False, True, False])
  out = det.from_tfds(ex)
  np.testing.assert_allclose(out["boxes"].numpy(), boxes[[0, 2]], atol=1e-4)
  np.testing.assert_array_equal(out["labels"].numpy(), [2, 1])
  assert out["labels"].dtype == tf.int32
  np.testing.assert_array_equal(out["original_size"].numpy(), [48, 64])
  assert int(out["image_id"]) == 7
  kept = det.from_tfds(ex, skip_crowd=False)
  np.testing.assert_allclose(kept["boxes"].numpy(), boxes, atol=1e-4)


def test_from_tfds_decodes_encoded_images():
  ex = make_example(20, 30, [[2, 3, 12, 13]], [0])
  ex["image"] = tf.io.encode_png(ex["image"])
  out = det.from_tfds(ex)
  assert out["image"].shape == (20, 30, 3) and out["image"].dtype == tf.uint8
  assert int(out["image"][5, 5, 0]) == 255 and int(out["image"][15, 15, 0]) == 0


def test_flip_matches_reference_moves_content_and_twice_restores():
  boxes = np.array([[10, 5, 30, 25], [41, 0, 64, 9]], np.float64)
  ex = make_example(48, 64, boxes, [0, 1])
  image, flipped = det.flip_left_right(ex["image"], tf.constant(boxes, tf.float32))
  ref = np.stack([64 - boxes[:, 2], boxes[:, 1], 64 - boxes[:, 0], boxes[:, 3]], -1)
  np.testing.assert_allclose(flipped.numpy(), ref, atol=1e-5)
  np.testing.assert_array_equal(image.numpy(), ex["image"].numpy()[:, ::-1])
  assert_content_under_boxes(image.numpy() / 255.0, flipped.numpy(), margin=0.5)
  image2, boxes2 = det.flip_left_right(image, flipped)
  np.testing.assert_array_equal(image2.numpy(), ex["image"].numpy())
  np.testing.assert_allclose(boxes2.numpy(), boxes, atol=1e-5)


@pytest.mark.parametrize("h, w, scale, fraction", [
    (90, 160, 1.0, (0.0, 0.0)),      # landscape, fit only
    (150, 70, 0.83, (0.0, 0.0)),     # portrait, shrunk
    (90, 160, 1.2, (0.37, 0.81)),    # larger than the canvas: cropped
    (160, 90, 1.17, (0.99, 0.5)),    # portrait, crop at the far end
])
def test_resize_crop_pad_matches_reference_and_content(h, w, scale, fraction):
  size = 128
  boxes = np.array([[20, 10, 60, 50], [100 % w, 60 % h, 100 % w + 25, 60 % h + 20]], np.float64)
  boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w)
  boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h)
  ex = make_example(h, w, boxes, [0, 1])
  out = det.resize_crop_pad(tf.cast(ex["image"], tf.float32) / 255.0,
                            tf.constant(boxes, tf.float32), canvas_size=size, scale=scale,
                            crop_fraction=fraction)
  ref_boxes, ref_scale, ref_offset = ref_place(boxes, h, w, size=size, scale=scale,
                                               fraction=fraction)
  assert out["image"].shape == (size, size, 3)
  np.testing.assert_allclose(out["boxes"].numpy(), ref_boxes, atol=1e-3)
  np.testing.assert_allclose(out["scale"].numpy(), ref_scale, rtol=1e-6)
  np.testing.assert_array_equal(out["offset"].numpy(), ref_offset)
  # Padding (bottom/right of the resized image) is exactly zero.
  new = np.round(np.array([h, w]) * size / max(h, w) * scale).astype(int)
  region = np.minimum(new - ref_offset, size)
  canvas = out["image"].numpy()
  assert np.all(canvas[region[0]:] == 0) and np.all(canvas[:, region[1]:] == 0)
  wh = ref_boxes[:, 2:] - ref_boxes[:, :2]
  visible = ref_boxes[(wh > 4).all(-1)]
  assert len(visible) >= 1
  assert_content_under_boxes(canvas, visible)


def test_preprocess_train_boxes_match_reference_for_sampled_params_and_content():
  h, w, size = 96, 150, 128
  boxes = np.array([[12, 8, 52, 40], [90, 50, 140, 90]], np.float64)
  features = det.from_tfds(make_example(h, w, boxes, [1, 2]))
  seen_flip, seen_crop = set(), False
  for s in range(12):
    out = det.preprocess_train(features, tf.constant([3, s], tf.int64), canvas_size=size,
                               max_boxes=4, min_box_size=0.0)
    flipped = bool(out["flipped"])
    seen_flip.add(flipped)
    sy, sx = out["scale"].numpy().astype(np.float64)
    offset = out["offset"].numpy()
    seen_crop |= bool(offset.any())
    jitter = sx * w / (size / max(h, w) * w)
    assert 0.8 - 0.01 <= jitter <= 1.25 + 0.01
    new = np.round(np.array([h * sy, w * sx])).astype(int)
    src = boxes.copy()
    if flipped:
      src = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], -1)
    ref = src * [sx, sy, sx, sy] - offset[[1, 0, 1, 0]]
    ref = np.clip(ref, 0, np.minimum(new - offset, size)[[1, 0, 1, 0]])
    keep = (ref[:, 2] > ref[:, 0]) & (ref[:, 3] > ref[:, 1])
    mask = out["mask"].numpy()
    assert mask.sum() == keep.sum() and mask[:keep.sum()].all()
    np.testing.assert_allclose(out["boxes"].numpy()[mask], ref[keep], atol=1e-3)
    np.testing.assert_array_equal(out["labels"].numpy()[mask], np.array([1, 2])[keep])
    big = out["boxes"].numpy()[mask]
    big = big[(big[:, 2] - big[:, 0] > 4) & (big[:, 3] - big[:, 1] > 4)]
    assert_content_under_boxes(out["image"].numpy(), big)
  assert seen_flip == {True, False} and seen_crop


def test_preprocess_train_is_a_function_of_the_seed():
  features = det.from_tfds(make_example(60, 80, [[10, 10, 40, 30]], [0]))
  a = det.preprocess_train(features, tf.constant([1, 2], tf.int64), canvas_size=512)
  b = det.preprocess_train(features, tf.constant([1, 2], tf.int64), canvas_size=512)
  scales = {tuple(det.preprocess_train(features, tf.constant([1, s], tf.int64),
                                       canvas_size=512)["scale"].numpy()) for s in range(5)}
  for key in a:
    np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
  assert len(scales) == 5


def test_boxes_cropped_away_or_too_thin_are_masked_out():
  h, w, size = 100, 100, 50
  # Crop fraction (1, 1) at scale 1.2 keeps the bottom-right 50x50 of a 60x60 resize, i.e.
  # original pixels x, y >= 10/0.6 = 16.7. Box 0 lies entirely before that; box 1 (y < 17)
  # keeps 0.2 px once resized (dropped at min_box_size 1); box 2 survives.
  boxes = np.array([[0, 0, 15, 15], [50, 0, 90, 17.2], [20, 20, 60, 60]], np.float64)
  ex = det.from_tfds(make_example(h, w, np.floor(boxes), [0, 1, 2]))
  placed = det.resize_crop_pad(ex["image"], ex["boxes"], canvas_size=size, scale=1.2,
                               crop_fraction=(0.999, 0.999))
  np.testing.assert_array_equal(placed["offset"].numpy(), [10, 10])
  ref, _, _ = ref_place(np.floor(boxes), h, w, size=size, scale=1.2, fraction=(0.999, 0.999))
  np.testing.assert_allclose(placed["boxes"].numpy(), ref, atol=1e-3)
  out = det._finish(ex, placed, False, max_boxes=3, min_box_size=1.0)
  np.testing.assert_array_equal(out["mask"].numpy(), [True, False, False])
  np.testing.assert_array_equal(out["labels"].numpy(), [2, -1, -1])
  np.testing.assert_allclose(out["boxes"].numpy()[0], ref[2], atol=1e-3)


def test_pad_boxes_pads_with_mask():
  boxes = tf.constant([[1, 2, 3, 4], [5, 6, 7, 8]], tf.float32)
  b, l, m = det.pad_boxes(boxes, tf.constant([3, 4]), 5)
  np.testing.assert_array_equal(b.numpy(), [[1, 2, 3, 4], [5, 6, 7, 8]] + [[0, 0, 0, 0]] * 3)
  np.testing.assert_array_equal(l.numpy(), [3, 4, -1, -1, -1])
  np.testing.assert_array_equal(m.numpy(), [True, True, False, False, False])
  assert l.dtype == tf.int32 and b.shape == (5, 4)


def test_truncation_inside_tf_data_warns_and_keeps_first_boxes():
  boxes = np.array([[i, i, i + 10, i + 10] for i in range(6)], np.float32)
  ds = tf.data.Dataset.from_tensors((boxes, np.arange(6, dtype=np.int32)))
  ds = ds.map(lambda b, l: det.pad_boxes(b, l, 4, image_id=tf.constant(42, tf.int64)))
  with pytest.warns(det.DetectionDataWarning, match=r"image id 42 has 6 boxes.*max_boxes=4"):
    (b, l, m), = list(ds.as_numpy_iterator())
  np.testing.assert_array_equal(b, boxes[:4])
  np.testing.assert_array_equal(l, [0, 1, 2, 3])
  assert m.all()
  with warnings.catch_warnings():
    warnings.simplefilter("error", det.DetectionDataWarning)
    list(tf.data.Dataset.from_tensors((boxes[:3], np.arange(3, dtype=np.int32))).map(
        lambda b, l: det.pad_boxes(b, l, 4)).as_numpy_iterator())


def _synthetic_dataset(sizes, seed=0):
  rng = np.random.default_rng(seed)
  examples = []
  for i, (h, w) in enumerate(sizes):
    n = int(rng.integers(0, 4))
    x1 = rng.integers(0, w - 12, n)
    y1 = rng.integers(0, h - 12, n)
    boxes = np.stack([x1, y1, x1 + rng.integers(6, 12, n), y1 + rng.integers(6, 12, n)], -1)
    examples.append((h, w, boxes.astype(np.float64), rng.integers(0, 3, n)))

  def gen():
    for i, (h, w, boxes, labels) in enumerate(examples):
      image, yxyx, labels = make_arrays(h, w, boxes, labels)
      yield {"image": image, "image/id": np.int64(100 + i),
             "objects": {"bbox": yxyx, "label": labels}}

  signature = {"image": tf.TensorSpec([None, None, 3], tf.uint8),
               "image/id": tf.TensorSpec([], tf.int64),
               "objects": {"bbox": tf.TensorSpec([None, 4], tf.float32),
                           "label": tf.TensorSpec([None], tf.int64)}}
  return tf.data.Dataset.from_generator(gen, output_signature=signature), examples


def test_eval_pipeline_static_shapes_padding_and_mapping_back():
  sizes = [(40, 60), (64, 32), (50, 50), (30, 70), (45, 45)]
  ds, examples = _synthetic_dataset(sizes)
  pipe = det.make_detection_pipeline(ds, canvas_size=32, max_boxes=5, batch_size=2, train=False)
  spec = pipe.element_spec
  assert spec["image"].shape == (2, 32, 32, 3) and spec["boxes"].shape == (2, 5, 4)
  assert all(s.shape.is_fully_defined() for s in spec.values())
  batches = list(pipe.as_numpy_iterator())
  assert len(batches) == 3
  np.testing.assert_array_equal(batches[-1]["example_mask"], [True, False])
  assert batches[-1]["image_id"][1] == -1 and not batches[-1]["mask"][1].any()
  got = {int(i): b for batch in batches for i, b in zip(
      batch["image_id"], det.to_original_boxes(batch["boxes"], batch["scale"]))}
  for i, (h, w, boxes, labels) in enumerate(examples):
    batch = batches[i // 2]
    j = i % 2
    np.testing.assert_array_equal(batch["original_size"][j], [h, w])
    fit = 32 / max(h, w)
    np.testing.assert_allclose(batch["scale"][j], np.round(np.array([h, w]) * fit) / [h, w],
                               rtol=1e-6)
    n = len(boxes)
    np.testing.assert_array_equal(batch["mask"][j], np.arange(5) < n)
    np.testing.assert_array_equal(batch["labels"][j][:n], labels)
    np.testing.assert_allclose(got[100 + i][:n], boxes, atol=1e-3)
    assert not batch["flipped"][j] and not batch["offset"][j].any()


def test_train_pipeline_is_deterministic_given_seed_and_varies_across_epochs():
  ds, _ = _synthetic_dataset([(40, 60), (64, 32), (50, 50)])
  kwargs = dict(canvas_size=256, max_boxes=4, batch_size=2, train=True, shuffle_buffer=3)
  run = lambda seed: list(det.make_detection_pipeline(ds, seed=seed, **kwargs).take(3)
                          .as_numpy_iterator())  # noqa: E731
  a, b, c = run(5), run(5), run(6)
  assert all(x["image"].shape == (2, 256, 256, 3) for x in a)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert any(not np.array_equal(x["scale"], y["scale"]) for x, y in zip(a, c))
  # 6 elements = 2 epochs of 3 images: each image comes twice, augmented differently.
  params = {}
  for x in a:
    for i, s, f, o in zip(x["image_id"], x["scale"], x["flipped"], x["offset"]):
      params.setdefault(int(i), []).append((tuple(s), bool(f), tuple(o)))
  assert sorted(params) == [100, 101, 102]
  assert all(len(p) == 2 and p[0] != p[1] for p in params.values())


def test_pipeline_rejects_bad_arguments():
  ds, _ = _synthetic_dataset([(40, 60)])
  with pytest.raises(ValueError, match="scale_range"):
    det.make_detection_pipeline(ds, batch_size=1, train=True, scale_range=(1.2, 0.8))
  with pytest.raises(ValueError, match="batch_size"):
    det.make_detection_pipeline(ds, batch_size=0, train=False)
  with pytest.raises(ValueError, match="flip_prob"):
    det.make_detection_pipeline(ds, batch_size=1, train=True, flip_prob=1.5)


def test_flip_up_down_matches_reference_and_twice_restores():
  h, w = 20, 30
  image = np.arange(h * w * 3, dtype=np.float32).reshape(h, w, 3)
  boxes = np.array([[2.0, 3.0, 10.0, 7.0], [0.0, 0.0, 30.0, 20.0]], np.float32)
  flipped, fboxes = det.flip_up_down(tf.constant(image), tf.constant(boxes))
  np.testing.assert_array_equal(flipped.numpy(), image[::-1])
  np.testing.assert_array_equal(fboxes.numpy(), [[2, 13, 10, 17], [0, 0, 30, 20]])
  back, bboxes = det.flip_up_down(flipped, fboxes)
  np.testing.assert_array_equal(back.numpy(), image)
  np.testing.assert_array_equal(bboxes.numpy(), boxes)


def test_train_pipeline_vertical_flips_and_start_step():
  """``vflip_prob=1`` flips every image up-down (content stays under its boxes), and
  ``start_step=k`` yields what the uninterrupted pipeline yields from batch ``k`` on."""
  ds, examples = _synthetic_dataset([(40, 60), (64, 32), (50, 50)])
  kw = dict(canvas_size=64, max_boxes=4, batch_size=2, train=True, shuffle_buffer=3, seed=1,
            scale_range=(1.0, 1.0), flip_prob=0.0)
  full = list(det.make_detection_pipeline(ds, vflip_prob=1.0, **kw).take(5).as_numpy_iterator())
  for batch in full:
    for image, boxes, mask in zip(batch["image"], batch["boxes"], batch["mask"]):
      assert_content_under_boxes(image, boxes[mask])
  plain = list(det.make_detection_pipeline(ds, **kw).take(1).as_numpy_iterator())[0]
  # Same order and scale, mirrored vertically: y -> h_canvas_image - y for the image region.
  np.testing.assert_array_equal(plain["image_id"], full[0]["image_id"])
  assert not np.array_equal(plain["boxes"], full[0]["boxes"])
  resumed = list(det.make_detection_pipeline(ds, vflip_prob=1.0, start_step=3, **kw)
                 .take(2).as_numpy_iterator())
  for x, y in zip(resumed, full[3:]):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  with pytest.raises(ValueError, match="vflip_prob"):
    det.make_detection_pipeline(ds, batch_size=1, train=True, vflip_prob=2.0)
