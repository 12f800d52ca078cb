"""The seeded mosaic multi-label set (``jaxvision.data.mosaic``) on random stand-in images:
determinism, label sets recovered from the pixels, test mosaics made only of test images,
disjoint train/val pools, the tf.data pipelines, and ``mosaic:digits`` by name."""

import numpy as np
import pytest

from jaxvision.data import mosaic

K = 5


def _source(seed=0, n_train=200, n_test=60, size=4):
  """Random uint8 images (all distinct) with labels; train and test share no image."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n_train + n_test, size, size, 3), dtype=np.uint8)
  assert len({x.tobytes() for x in images}) == len(images)
  labels = np.arange(n_train + n_test) % K
  rng.shuffle(labels)
  return images[:n_train], labels[:n_train], images[n_train:], labels[n_train:]


OPTS = dict(num_train=300, num_val=50, num_test=40, val_images=40, seed=3)


def _splits(**overrides):
  return mosaic.make_mosaic_splits(*_source(), num_classes=K, **dict(OPTS, **overrides))


def _blocks(images, grid=2):
  """The grid x grid tiles of mosaics [N, G*h, G*w, C] as [N, G*G, h, w, C], row-major."""
  n, gh, gw, c = images.shape
  h, w = gh // grid, gw // grid
  return images.reshape(n, grid, h, grid, w, c).transpose(0, 1, 3, 2, 4, 5).reshape(
      n, grid * grid, h, w, c)


def test_same_seed_same_mosaics_and_splits_have_their_own_streams():
  a, b = _splits(), _splits()
  for name in mosaic.SPLITS:
    np.testing.assert_array_equal(a[name].tiles, b[name].tiles)
    np.testing.assert_array_equal(a[name].labels, b[name].labels)
  other = _splits(seed=4)
  assert not np.array_equal(other["train"].tiles, a["train"].tiles)
  more_train = _splits(num_train=500)  # val and test do not move
  for name in ("val", "test"):
    np.testing.assert_array_equal(more_train[name].tiles, a[name].tiles)
    np.testing.assert_array_equal(more_train[name].pool_ids, a[name].pool_ids)


def test_label_sets_are_the_classes_seen_in_the_pixels():
  train_x, train_y, test_x, test_y = _source()
  where = {}  # image bytes -> (source split, class)
  for split, xs, ys in (("train", train_x, train_y), ("test", test_x, test_y)):
    where.update({x.tobytes(): (split, int(y)) for x, y in zip(xs, ys)})
  splits = _splits()
  for name, split in splits.items():
    blocks = _blocks(split.images())
    assert blocks.shape[1:] == (4, 4, 4, 3)
    for i, mosaic_tiles in enumerate(blocks):
      found = [where[t.tobytes()] for t in mosaic_tiles]  # KeyError: a tile from nowhere
      sources = {s for s, _ in found}
      assert sources == ({"test"} if name == "test" else {"train"}), (name, i, sources)
      present = np.zeros(K, np.uint8)
      present[[c for _, c in found]] = 1
      np.testing.assert_array_equal(split.labels[i], present)


def test_val_pool_is_held_out_of_train_and_stratified():
  splits = _splits()
  train_ids, val_ids = splits["train"].pool_ids, splits["val"].pool_ids
  assert not set(train_ids) & set(val_ids)
  assert len(train_ids) + len(val_ids) == 200 and len(val_ids) == 40
  _, train_y, _, _ = _source()
  counts = np.bincount(train_y, minlength=K)  # classes of unequal size: 40 in proportion
  np.testing.assert_array_equal(np.bincount(train_y[val_ids], minlength=K),
                                np.round(40 * counts / 200))
  used_val = {int(splits["val"].pool_ids[t]) for t in splits["val"].tiles.ravel()}
  used_train = {int(splits["train"].pool_ids[t]) for t in splits["train"].tiles.ravel()}
  assert used_val <= set(val_ids) and not used_val & used_train


def test_classes_per_mosaic_span_the_range_and_images_are_used_evenly():
  split = _splits(num_train=2000)["train"]
  per_mosaic = split.labels.sum(1)
  assert set(np.unique(per_mosaic)) == {1, 2, 3, 4}
  # Uniform number of distinct classes: about 500 mosaics each.
  assert np.all(np.abs(np.bincount(per_mosaic)[1:] - 500) < 80)
  uses = np.bincount(split.tiles.ravel(), minlength=len(split.pool))
  for c in range(K):  # shuffled passes over each class: uses differ by at most one
    members = uses[split.pool_labels == c]
    assert members.max() - members.min() <= 1
  one = _splits(min_classes=1, max_classes=1)["test"]
  assert np.all(one.labels.sum(1) == 1)


def test_compose_places_tiles_row_major():
  pool = np.arange(4)[:, None, None, None] * np.ones((4, 2, 3, 1), np.uint8)
  out = mosaic.compose(pool, np.array([[0, 1, 2, 3]]), 2)
  assert out.shape == (1, 4, 6, 1)
  np.testing.assert_array_equal(out[0, ::2, ::3, 0], [[0, 1], [2, 3]])


def test_pipelines_compose_the_same_mosaics():
  split = _splits()["val"]
  batches = list(mosaic.make_eval_iterator(split, global_batch_size=16, pp="",
                                           process_index=0, process_count=1))
  assert len(batches) == 4  # 50 mosaics: the last batch has 2 real rows
  images = np.concatenate([b["image"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 50 and not mask[50:].any() and images.dtype == np.float32
  np.testing.assert_array_equal(images[:50], split.images().astype(np.float32))
  np.testing.assert_array_equal(labels[:50], split.labels)
  assert not labels[50:].any()
  kwargs = dict(global_batch_size=8, pp="flip_lr|value_range(0, 1)", seed=1,
                process_index=0, process_count=1)
  train = mosaic.make_train_iterator(split, **kwargs)
  first = [next(train) for _ in range(3)]
  resumed = next(mosaic.make_train_iterator(split, start_step=2, **kwargs))
  np.testing.assert_array_equal(resumed["image"], first[2]["image"])
  np.testing.assert_array_equal(resumed["label"], first[2]["label"])
  assert first[0]["image"].shape == (8, 8, 8, 3) and first[0]["label"].shape == (8, K)
  assert first[0]["image"].max() <= 1.0


def test_mosaics_of_digits_by_name():
  ds = mosaic.get_mosaic_dataset("mosaic:digits", num_train=64, num_val=16, num_test=16,
                                 val_images=100)
  assert ds.name == "mosaic:digits" and ds.image_shape == (16, 16, 1)
  assert ds.class_names == tuple(str(i) for i in range(10))
  assert ds.num_examples == {"train": 64, "val": 16, "test": 16}
  from jaxvision import data
  from jaxvision.data import pipeline
  builder, info = data.get_dataset("digits")
  test_x, test_y = pipeline.load_split(builder, info, "test")
  test = ds.split("test")
  assert test.source_split == "test"
  np.testing.assert_array_equal(test.pool, test_x[test.pool_ids])
  np.testing.assert_array_equal(test.pool_labels, test_y[test.pool_ids])
  assert mosaic.resolve_name("cifar10_mosaic") == "cifar10"


def test_bad_names_and_options_are_one_line_errors():
  with pytest.raises(ValueError, match=r"expected a mosaic dataset name 'mosaic:<class"):
    mosaic.resolve_name("cifar10")
  with pytest.raises(ValueError, match=r"unknown mosaic option\(s\) \['tiles'\]"):
    mosaic.get_mosaic_dataset("mosaic:digits", tiles=3)
  with pytest.raises(ValueError, match="min_classes <= max_classes"):
    _splits(min_classes=3, max_classes=2)
  with pytest.raises(ValueError, match="val_images < 200"):
    _splits(val_images=200)
  with pytest.raises(ValueError, match="has splits"):
    mosaic.MosaicDataset("m", "s", ("a",), (2, 2, 1), {}, {}).split("validation")
