"""IDX parsing and the IDX-folder TFDS builder, on synthetic folders and the real MNIST headers."""

import gzip
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxvision.data.builders import idx

TRAIN_N, TEST_N, H, W = 40, 13, 5, 4   # non-square to catch H/W swaps


def _write_gz(path, header: bytes, payload: bytes):
  with gzip.open(path, "wb") as f:
    f.write(header + payload)


def _write_images(path, images):
  # Independent writer: magic 0x00000803 (uint8, 3 dims) then big-endian uint32 dims.
  n, h, w = images.shape
  _write_gz(path, struct.pack(">IIII", 0x803, n, h, w), images.astype(np.uint8).tobytes())


def _write_labels(path, labels):
  _write_gz(path, struct.pack(">II", 0x801, len(labels)), labels.astype(np.uint8).tobytes())


def make_folder(folder, seed=0, train_n=TRAIN_N, test_n=TEST_N):
  """Writes the four MNIST-layout files; every image is unique (its index is in pixel 0)."""
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for split, n, offset in (("train", train_n, 0), ("test", test_n, 100)):
    images = rng.integers(0, 256, size=(n, H, W), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n) + offset
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images_name, labels_name = idx.SPLIT_FILES[split]
    _write_images(folder / images_name, images)
    _write_labels(folder / labels_name, labels)
    arrays[split] = (images, labels)
  return arrays


def test_read_idx_matches_written_arrays(tmp_path):
  arrays = make_folder(tmp_path / "synth")
  images = idx.read_idx(tmp_path / "synth" / "train-images-idx3-ubyte.gz")
  labels = idx.read_idx(tmp_path / "synth" / "train-labels-idx1-ubyte.gz")
  assert images.dtype == np.uint8 and images.shape == (TRAIN_N, H, W)
  np.testing.assert_array_equal(images, arrays["train"][0])
  np.testing.assert_array_equal(labels, arrays["train"][1])
  assert idx.read_idx_header(tmp_path / "synth" / "t10k-images-idx3-ubyte.gz") == (
      np.dtype(">u1"), (TEST_N, H, W))


def test_write_idx_round_trips_other_dtypes(tmp_path):
  for dtype in (np.int16, np.int32, np.float32, np.float64):
    a = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    idx.write_idx(tmp_path / "a.gz", a)
    # Independent check of the header bytes, then of the values.
    with gzip.open(tmp_path / "a.gz", "rb") as f:
      raw = f.read()
    assert raw[:2] == b"\x00\x00" and raw[3] == 3
    assert struct.unpack(">3I", raw[4:16]) == (2, 3, 4)
    np.testing.assert_array_equal(np.frombuffer(raw[16:], np.dtype(dtype).newbyteorder(">")), a.ravel())
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "a.gz"), a)


def test_corrupt_header_raises_value_error(tmp_path):
  bad_magic = tmp_path / "bad.gz"
  _write_gz(bad_magic, struct.pack(">IIII", 0x12345678, 1, 2, 2), b"\0" * 4)
  with pytest.raises(ValueError, match="magic"):
    idx.read_idx(bad_magic)
  truncated = tmp_path / "trunc.gz"
  _write_gz(truncated, struct.pack(">IIII", 0x803, 10, 28, 28), b"\0" * 100)
  with pytest.raises(ValueError, match="7840 bytes"):
    idx.read_idx(truncated)
  short_header = tmp_path / "short.gz"
  _write_gz(short_header, struct.pack(">II", 0x803, 10), b"")
  with pytest.raises(ValueError, match="truncated"):
    idx.read_idx(short_header)
  not_gzip = tmp_path / "plain.gz"
  not_gzip.write_bytes(b"this is not gzip data at all")
  with pytest.raises(ValueError, match="gzip"):
    idx.read_idx(not_gzip)


def test_missing_and_incomplete_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    idx.idx_builder(tmp_path / "nope", data_dir=tmp_path / "tfds")
  folder = tmp_path / "partial"
  make_folder(folder)
  (folder / "t10k-images-idx3-ubyte.gz").unlink()
  (folder / "train-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(FileNotFoundError) as e:
    idx.idx_builder(folder, data_dir=tmp_path / "tfds")
  msg = str(e.value)
  assert str(folder) in msg
  assert "t10k-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg
  assert "t10k-labels-idx1-ubyte.gz" not in msg.split("missing")[1].split("(expected")[0]


def test_builder_prepares_the_written_examples(tmp_path):
  arrays = make_folder(tmp_path / "synth")
  builder = idx.idx_builder(tmp_path / "synth", data_dir=tmp_path / "tfds")
  builder.download_and_prepare()
  assert builder.info.features["image"].shape == (H, W, 1)
  assert builder.info.features["image"].dtype == np.uint8
  assert builder.info.features["label"].names == [str(i) for i in range(10)]
  assert {s: v.num_examples for s, v in builder.info.splits.items()} == {
      "train": TRAIN_N, "test": TEST_N}
  for split, (images, labels) in arrays.items():
    got = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    assert got["image"].shape == (len(labels), H, W, 1)
    # Stored order is TFDS's; match examples by their unique pixel (0, 0).
    order = np.argsort(got["image"][:, 0, 0, 0])
    np.testing.assert_array_equal(got["image"][order, :, :, 0], images)
    np.testing.assert_array_equal(got["label"][order], labels)


def test_count_mismatch_raises(tmp_path):
  folder = tmp_path / "mismatch"
  make_folder(folder)
  _write_labels(folder / "train-labels-idx1-ubyte.gz", np.zeros(TRAIN_N - 1, np.uint8))
  with pytest.raises(ValueError, match=f"{TRAIN_N} images .* {TRAIN_N - 1} labels"):
    idx.load_idx_split(folder, "train")


def test_configs_keyed_by_folder_and_fashion_names(tmp_path):
  make_folder(tmp_path / "mnist", seed=1)
  make_folder(tmp_path / "fashion-mnist", seed=2)
  a = idx.idx_builder(tmp_path / "mnist", data_dir=tmp_path / "tfds")
  b = idx.idx_builder(tmp_path / "fashion-mnist", data_dir=tmp_path / "tfds")
  assert a.builder_config.name.startswith("mnist_")
  assert b.builder_config.name.startswith("fashion_mnist_")
  assert a.data_dir != b.data_dir
  assert b.info.features["label"].names[0] == "T-shirt/top"
  assert b.info.features["label"].names[9] == "Ankle boot"
  names = [f"c{i}" for i in range(10)]
  c = idx.idx_builder(tmp_path / "mnist", class_names=names, data_dir=tmp_path / "tfds")
  assert c.info.features["label"].names == names
  assert c.builder_config.name != a.builder_config.name


def test_labels_out_of_range_for_class_names(tmp_path):
  make_folder(tmp_path / "synth")
  builder = idx.idx_builder(tmp_path / "synth", class_names=["a", "b"], data_dir=tmp_path / "t")
  with pytest.raises(ValueError, match="out of range"):
    builder.download_and_prepare()


def test_real_mnist_headers_and_labels(mnist_dir):
  for split, n in (("train", 60000), ("test", 10000)):
    images_name, labels_name = idx.SPLIT_FILES[split]
    assert idx.read_idx_header(mnist_dir / images_name) == (np.dtype(">u1"), (n, 28, 28))
    labels = idx.read_idx(mnist_dir / labels_name)
    assert labels.shape == (n,) and labels.max() == 9
  counts = np.bincount(idx.read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz"))
  # The official MNIST test set's class counts.
  np.testing.assert_array_equal(counts, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])


def test_labels_edited_without_changing_the_gz_size_are_prepared_again(tmp_path):
  import os
  folder = tmp_path / "synth"
  images, labels = make_folder(folder)["train"]
  path = folder / "train-labels-idx1-ubyte.gz"

  def write_stored(values):  # gzip without compression: the size depends on the length only
    with gzip.open(path, "wb", compresslevel=0) as f:
      f.write(struct.pack(">II", 0x801, len(values)) + values.astype(np.uint8).tobytes())

  def train_labels():
    builder = idx.idx_builder(folder, data_dir=tmp_path / "tfds")
    builder.download_and_prepare()
    got = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1))
    return builder.data_dir, got["label"][np.argsort(got["image"][:, 0, 0, 0])]

  write_stored(labels)
  first_dir, first = train_labels()
  np.testing.assert_array_equal(first, labels)
  stat = path.stat()
  edited = (labels + 1) % 10
  write_stored(edited)
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
  second_dir, second = train_labels()
  np.testing.assert_array_equal(second, edited)
  assert second_dir != first_dir
