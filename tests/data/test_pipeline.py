"""Dataset resolution and the train/eval iterators: determinism, resume, multi-host, coverage."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxvision import data
from jaxvision.data import datasets, paths, pipeline
from jaxvision.data.builders import idx

TRAIN_N, TEST_N = 70, 13
AUG = "random_crop(4, pad=1)|flip_lr|rotate(20)|value_range(0, 1)"


def _write_folder(folder, train_n=TRAIN_N, test_n=TEST_N):
  """IDX folder of 4x4 images whose pixels (0, 0), (0, 1) encode the example id; label id % 10."""
  folder.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for split, n, first_id in (("train", train_n, 0), ("test", test_n, 1000)):
    ids = np.arange(first_id, first_id + n)
    images = rng.integers(0, 256, size=(n, 4, 4), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = ids // 256, ids % 256
    images_name, labels_name = idx.SPLIT_FILES[split]
    idx.write_idx(folder / images_name, images)
    idx.write_idx(folder / labels_name, (ids % 10).astype(np.uint8))


def _ids(batch):
  """Example ids decoded from images passed through an empty spec (values kept as float)."""
  return (batch["image"][:, 0, 0, 0] * 256 + batch["image"][:, 0, 1, 0]).astype(np.int64)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipeline")
  _write_folder(root / "synth")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv(paths.TFDS_ENV_VAR, str(root / "tfds"))
    builder, info = data.get_dataset(f"idx:{root / 'synth'}")
  return builder, info


def _take(it, n):
  return [next(it) for _ in range(n)]


def _train(synthetic, **kwargs):
  builder, info = synthetic
  args = dict(split="train", global_batch_size=8, pp="", seed=3)
  args.update(kwargs)
  return pipeline.make_train_iterator(builder, info, **args)


def test_idx_dataset_info(synthetic, tmp_path):
  _, info = synthetic
  assert info.num_examples == {"train": TRAIN_N, "test": TEST_N}
  assert info.image_shape == (4, 4, 1)
  assert info.num_classes == 10 and info.class_names == tuple(str(i) for i in range(10))
  assert info.name.startswith("idx:") and info.source.startswith("IDX folder ")
  assert pipeline.steps_per_epoch(info, "train", 8) == TRAIN_N // 8
  assert pipeline.split_size(info, "train[:50%]") == TRAIN_N // 2
  assert pipeline.split_size(info, "train[10:20]+test") == 10 + TEST_N
  with pytest.raises(ValueError, match="larger than split"):
    pipeline.steps_per_epoch(info, "test", 64)
  with pytest.raises(ValueError, match="splits"):
    pipeline.steps_per_epoch(info, "validation", 8)


def test_train_batches_are_epoch_permutations(synthetic):
  spe = TRAIN_N // 8
  batches = _take(_train(synthetic), 2 * spe)
  for b in batches:
    assert b["image"].shape == (8, 4, 4, 1) and b["image"].dtype == np.float32
    assert b["label"].shape == (8,) and b["label"].dtype == np.int32
    np.testing.assert_array_equal(b["label"], _ids(b) % 10)
  epochs = [np.concatenate([_ids(b) for b in batches[e * spe:(e + 1) * spe]]) for e in range(2)]
  for ids in epochs:
    assert len(set(ids.tolist())) == spe * 8 and ids.min() >= 0 and ids.max() < TRAIN_N
  assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch
  assert not np.array_equal(epochs[0], np.sort(epochs[0]))  # shuffled at all
  other_seed = np.concatenate([_ids(b) for b in _take(_train(synthetic, seed=4), spe)])
  assert not np.array_equal(other_seed, epochs[0])


@pytest.mark.parametrize("start_step", [3, 8, 17])
def test_resume_equals_uninterrupted(synthetic, start_step):
  # 8 steps per epoch: 3 is mid-epoch (the 5 batches cross into epoch 1), 8 starts epoch 1,
  # 17 is in epoch 2.
  full = _take(_train(synthetic, pp=AUG), start_step + 5)
  resumed = _take(_train(synthetic, pp=AUG, start_step=start_step), 5)
  for a, b in zip(full[start_step:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  repeat = _take(_train(synthetic, pp=AUG), 3)
  np.testing.assert_array_equal(repeat[2]["image"], full[2]["image"])


def test_far_resume_needs_no_replay(synthetic):
  # A billion steps in: computed directly (replaying would not finish).
  batch = next(_train(synthetic, start_step=10**9))
  ids = _ids(batch)
  assert len(set(ids.tolist())) == 8 and ids.max() < TRAIN_N


def test_replaced_labels_follow_their_examples(synthetic):
  """``labels`` (e.g. cluster ids) replace the stored labels per example; images and order are
  those of the plain iterator."""
  builder, info = synthetic
  images, _ = pipeline.load_split(builder, info, "train")  # stored order
  new_labels = (np.arange(TRAIN_N) * 7 + 3) % 5  # the i-th stored example gets (7 i + 3) mod 5
  label_of_id = dict(zip(_ids({"image": images.astype(np.float64)}), new_labels))
  plain = _take(_train(synthetic, start_step=5), 4)
  relabelled = _take(_train(synthetic, start_step=5, labels=new_labels), 4)
  for a, b in zip(plain, relabelled):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(b["label"], [label_of_id[i] for i in _ids(b)])
    assert b["label"].dtype == np.int32
  with pytest.raises(ValueError, match=r"labels must be integers of shape \(70,\)"):
    _train(synthetic, labels=new_labels[:-1])
  with pytest.raises(ValueError, match="labels must be integers"):
    _train(synthetic, labels=new_labels.astype(np.float32))


def test_multi_host_slices_are_disjoint_halves(synthetic):
  one = _take(_train(synthetic, pp=AUG, process_index=0, process_count=1), 10)
  parts = [_take(_train(synthetic, pp=AUG, process_index=p, process_count=2), 10) for p in (0, 1)]
  ids_parts = [_take(_train(synthetic, process_index=p, process_count=2), 10) for p in (0, 1)]
  for step in range(10):
    assert parts[0][step]["image"].shape[0] == 4
    np.testing.assert_array_equal(
        np.concatenate([parts[0][step]["image"], parts[1][step]["image"]]), one[step]["image"])
    np.testing.assert_array_equal(
        np.concatenate([parts[0][step]["label"], parts[1][step]["label"]]), one[step]["label"])
    a, b = _ids(ids_parts[0][step]), _ids(ids_parts[1][step])
    assert not set(a.tolist()) & set(b.tolist())
  with pytest.raises(ValueError, match="multiple of the process count 3"):
    _train(synthetic, process_index=0, process_count=3)


def test_eval_visits_every_example_once(synthetic):
  builder, info = synthetic
  stored = tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1))
  all_ids, all_labels, masks = [], [], []
  for p in (0, 1):
    ev = pipeline.make_eval_iterator(builder, info, split="test", global_batch_size=4, pp="",
                                     process_index=p, process_count=2)
    batches = list(ev)
    assert len(ev) == len(batches) == 4  # ceil(13 / 4), same on both processes
    for b in batches:
      assert b["image"].shape == (2, 4, 4, 1) and b["mask"].dtype == bool
      m = b["mask"]
      assert np.all(b["image"][~m] == 0) and np.all(b["label"][~m] == 0)
      all_ids.append(_ids(b)[m])
      all_labels.append(b["label"][m])
      masks.append(m)
    assert len(list(ev)) == 4  # re-iterable
  assert sum(m.sum() for m in masks) == TEST_N
  np.testing.assert_array_equal(np.sort(np.concatenate(all_ids)), np.arange(1000, 1000 + TEST_N))
  np.testing.assert_array_equal(np.sort(np.concatenate(all_labels)), np.sort(stored["label"]))


def test_unknown_name_and_bad_data_dir(tmp_path, monkeypatch):
  monkeypatch.setenv(paths.TFDS_ENV_VAR, str(tmp_path / "tfds"))
  with pytest.raises(ValueError, match="known: digits, mnist, fashion_mnist, cifar10"):
    data.get_dataset("imagenet")
  incomplete = tmp_path / "mnist_copy"
  incomplete.mkdir()
  (incomplete / "train-images-idx3-ubyte.gz").write_bytes(b"")
  with pytest.raises(FileNotFoundError) as e:
    data.get_dataset("mnist", data_dir=incomplete)
  assert str(incomplete) in str(e.value)
  for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
               "t10k-labels-idx1-ubyte.gz"):
    assert name in str(e.value)
  with pytest.raises(ValueError, match="takes no data_dir"):
    data.get_dataset("digits", data_dir=incomplete)


def test_missing_local_folder_and_failed_catalog(tmp_path, monkeypatch):
  monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "empty_root"))

  def offline(name):
    raise ConnectionError(f"cannot reach the download server for {name}")

  monkeypatch.setattr(datasets, "_catalog_builder", offline)
  with pytest.raises(FileNotFoundError) as e:
    data.get_dataset("fashion_mnist")
  msg = str(e.value)
  assert str(tmp_path / "empty_root" / "fashion-mnist") in msg
  assert "catalog" in msg and "cannot reach the download server" in msg


def test_fashion_names_from_dataset_name(tmp_path, monkeypatch):
  monkeypatch.setenv(paths.TFDS_ENV_VAR, str(tmp_path / "tfds"))
  _write_folder(tmp_path / "some_folder", train_n=10, test_n=3)
  _, info = data.get_dataset("fashion_mnist", data_dir=tmp_path / "some_folder")
  assert info.class_names[0] == "T-shirt/top" and info.num_examples == {"train": 10, "test": 3}


def test_digits_dataset(tmp_path, monkeypatch):
  monkeypatch.setenv(paths.TFDS_ENV_VAR, str(tmp_path / "tfds"))
  builder, info = data.get_dataset("digits")
  assert info.num_examples == {"train": 1437, "test": 360}
  assert info.source == "sklearn digits" and info.image_shape == (8, 8, 1)
  ev = pipeline.make_eval_iterator(builder, info, split="test", global_batch_size=100,
                                   pp="value_range(0, 1)", process_index=0, process_count=1)
  batches = list(ev)
  assert len(ev) == 4 and sum(b["mask"].sum() for b in batches) == 360
  # Stratified split: 36 test examples per class (sklearn digits has 174..183 per class).
  counts = np.bincount(np.concatenate([b["label"][b["mask"]] for b in batches]), minlength=10)
  assert counts.min() >= 35 and counts.max() <= 37


def test_real_mnist(mnist_dir, tmp_path, monkeypatch):
  monkeypatch.setenv(paths.TFDS_ENV_VAR, str(tmp_path / "tfds"))
  builder, info = data.get_dataset("mnist")
  assert info.num_examples == {"train": 60000, "test": 10000}
  assert info.image_shape == (28, 28, 1) and info.num_classes == 10
  assert info.source == f"IDX folder {mnist_dir}"
  ev = pipeline.make_eval_iterator(builder, info, split="test", global_batch_size=2048,
                                   pp="value_range(0, 1)", process_index=0, process_count=1)
  labels = np.concatenate([b["label"][b["mask"]] for b in ev])
  expected = np.bincount(idx.read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz"))
  np.testing.assert_array_equal(np.bincount(labels), expected)


def test_catalog_name_without_local_folder_goes_through_tfds_builder(tmp_path, monkeypatch):
  """'fashion_mnist' with no local folder resolves through ``tfds.builder`` (catalog path).

  The network is not reachable here, so ``tfds.builder`` returns TFDS's own ``DummyMnist``
  test builder (same features as the catalog's MNIST-style datasets) prepared in tmp_path.
  """
  monkeypatch.setenv("JAXVISION_DATA_DIR", str(tmp_path / "empty"))
  asked = []

  def fake_builder(name, **kwargs):
    asked.append(name)
    return tfds.testing.DummyMnist(data_dir=str(tmp_path / "tfds"))

  monkeypatch.setattr(tfds, "builder", fake_builder)
  builder, info = data.get_dataset("fashion_mnist")
  assert asked == ["fashion_mnist"] and info.source == "TFDS catalog fashion_mnist"
  assert info.image_shape == (28, 28, 1) and info.num_classes == 10
  n_test = info.num_examples["test"]
  batches = pipeline.make_eval_iterator(builder, info, split="test", global_batch_size=8,
                                        pp="value_range(0, 1)")
  assert sum(int(b["mask"].sum()) for b in batches) == n_test
  batch = next(pipeline.make_train_iterator(builder, info, split="train", global_batch_size=4,
                                            pp="value_range(0, 1)", seed=0))
  assert batch["image"].shape == (4, 28, 28, 1) and batch["image"].max() <= 1.0
