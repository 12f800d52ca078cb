"""The image-folder dataset (``builders/imagefolder.py``) on small folders written here, the
same from a zip, the trainer on such a folder, and CIFAR-10 from the shared JPEG zip."""

import io
import json
import os
import time
import warnings
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxvision import data, tasks
from jaxvision.data import datasets, paths
from jaxvision.data.builders import cifar, imagefolder
from jaxvision.training import trainer
from tests.support import require_data
from train.configs import digits_cnn

CLASSES = ("cat", "dog", "zebra")  # Written in the order dog, zebra, cat: labels are sorted.
SIZE = 16
CORRUPT = ("dog/broken.jpg", "cat/truncated.png")


def _write(path, array, fmt, mode=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.fromarray(array)
  if mode is not None:
    image = image.convert(mode)
  image.save(path, format=fmt)


def make_folder(root):
  """root/<class>/... with PNG and JPEG of several sizes and modes, plus two corrupt files.

  Returns ``{relative path: original uint8 array}`` of the PNGs written at 16x16 RGB (they
  must come back unchanged).
  """
  rng = np.random.default_rng(0)
  exact = {}
  for c, name in enumerate(("dog", "zebra", "cat")):
    for i in range(6):
      h, w = [(SIZE, SIZE), (20, 30), (40, 12)][i % 3]
      array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
      array[..., c] = np.maximum(array[..., c], 128)  # A colour cast per class to learn.
      sub = "nested/" if i == 5 else ""
      if i % 2 == 0:
        _write(root / name / f"{sub}{i}.png", array, "PNG")
        if (h, w) == (SIZE, SIZE):
          exact[f"{name}/{sub}{i}.png"] = array
      else:
        _write(root / name / f"{sub}{i}.JPG", array, "JPEG", mode="L" if i == 3 else None)
  rgba = rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
  _write(root / "cat" / "alpha.png", rgba, "PNG")
  exact["cat/alpha.png"] = rgba[..., :3]
  (root / "dog" / "broken.jpg").write_bytes(b"this is not a JPEG file")
  png = (root / "cat" / "0.png").read_bytes()
  (root / "cat" / "truncated.png").write_bytes(png[:len(png) // 2])  # Header reads, data cut.
  (root / "cat" / "notes.txt").write_text("not an image")
  (root / ".DS_Store").write_bytes(b"\0")
  return exact


def make_zip(folder, path, wrapper="photos/"):
  """Zips ``folder`` (deflated) with every member under ``wrapper``."""
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
    for dirpath, _, filenames in os.walk(folder):
      for f in sorted(filenames):
        full = os.path.join(dirpath, f)
        z.write(full, wrapper + os.path.relpath(full, folder).replace(os.sep, "/"))
  return path


def pil_reference(data_bytes_or_path, size=(SIZE, SIZE), channels=3):
  """What the images should be: PIL's full decode, convert, then bilinear resize to (H, W)."""
  image = Image.open(data_bytes_or_path).convert("RGBA" if channels == 3 else "L")
  image = image.convert("RGB") if channels == 3 else image
  if image.size != (size[1], size[0]):
    image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
  return np.asarray(image).reshape(size + (channels,))


def stored(builder, split):
  """``{file_name: (image, label)}`` of a prepared split."""
  arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
  return {n.decode(): (im, int(l)) for n, im, l in zip(arrays["file_name"], arrays["image"],
                                                        arrays["label"])}


def prepare_quietly(builder):
  """Prepares ``builder``; returns the messages of the unreadable-image warnings."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    builder.download_and_prepare()
  return [str(w.message) for w in caught
          if issubclass(w.category, imagefolder.UnreadableImageWarning)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("imagefolder") / "pets"
  exact = make_folder(root)
  return root, exact


def test_classes_counts_pixels_and_corrupt_files_skipped(folder, tmp_path):
  root, exact = folder
  builder = imagefolder.imagefolder_builder(root, size=SIZE, data_dir=tmp_path)
  skipped = prepare_quietly(builder)
  assert len(skipped) == 2
  for name in CORRUPT:
    assert sum(str(root / name) in m for m in skipped) == 1, skipped
  info = datasets.info_from_builder(builder, "pets", "test")
  assert info.class_names == CLASSES and info.image_shape == (SIZE, SIZE, 3)
  assert info.num_examples == {"train": 3 * 6 + 1}  # 6 per class, alpha.png; corrupt skipped
  got = stored(builder, "train")
  assert sorted(got) == sorted(
      str(p.relative_to(root).as_posix()) for p in root.rglob("*")
      if p.suffix.lower() in (".png", ".jpg") and p.relative_to(root).as_posix() not in CORRUPT)
  for name, (image, label) in got.items():
    assert label == CLASSES.index(name.split("/")[0])
    np.testing.assert_array_equal(image, pil_reference(root / name), err_msg=name)
  for name, array in exact.items():  # Lossless and already 16x16: the written pixels.
    np.testing.assert_array_equal(got[name][0], array, err_msg=name)
  grey = got["dog/3.JPG"][0]  # A grey JPEG comes back as three equal channels.
  assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 0], grey[..., 2])


def test_grey_and_rectangular_size(folder, tmp_path):
  root, _ = folder
  builder = imagefolder.imagefolder_builder(root, size=(12, 20), channels=1, data_dir=tmp_path)
  prepare_quietly(builder)
  got = stored(builder, "train")
  assert builder.info.features["image"].shape == (12, 20, 1)
  for name in ("cat/1.JPG", "zebra/2.png", "cat/alpha.png"):
    np.testing.assert_array_equal(got[name][0], pil_reference(root / name, (12, 20), 1))


def test_strict_raises_naming_the_corrupt_file(folder, tmp_path):
  root, _ = folder
  builder = imagefolder.imagefolder_builder(root, size=SIZE, strict=True, data_dir=tmp_path)
  with pytest.raises(ValueError, match=r"cannot read image .*(broken\.jpg|truncated\.png).*"
                                       r"strict=True"):
    builder.download_and_prepare()


def test_validation_split_is_stratified_deterministic_and_disjoint(folder, tmp_path):
  root, _ = folder

  def splits(seed, data_dir):
    builder = imagefolder.imagefolder_builder(root, size=SIZE, validation_split=0.34,
                                              seed=seed, data_dir=data_dir)
    prepare_quietly(builder)
    return stored(builder, "train"), stored(builder, "validation")

  train, val = splits(1, tmp_path / "a")
  assert not set(train) & set(val)
  assert len(train) + len(val) == 19
  # Per class (files listed before decoding): cat 8 -> 3, dog 7 -> 2, zebra 6 -> 2.
  listed = {"cat": 8, "dog": 7, "zebra": 6}
  counts = {c: sum(n.startswith(c + "/") for n in val) for c in CLASSES}
  corrupt_in_val = {c: sum(n.startswith(c + "/") for n in CORRUPT) for c in CLASSES}
  for c in CLASSES:
    expected = int(0.34 * listed[c] + 0.5)
    assert expected - corrupt_in_val[c] <= counts[c] <= expected, (c, counts)
  again_train, again_val = splits(1, tmp_path / "b")  # Prepared afresh: the same split.
  assert sorted(again_val) == sorted(val) and sorted(again_train) == sorted(train)
  _, other_val = splits(2, tmp_path / "c")
  assert sorted(other_val) != sorted(val)


def test_split_validation_reference():
  examples = [(f"f{i}", i % 2) for i in range(10)]
  train, val = imagefolder.split_validation(examples, 0.2, seed=5)
  # Label 0: indices 0, 2, 4, 6, 8; one held out, chosen by default_rng([5, 0]).
  pick0 = [0, 2, 4, 6, 8][np.random.default_rng([5, 0]).permutation(5)[0]]
  pick1 = [1, 3, 5, 7, 9][np.random.default_rng([5, 1]).permutation(5)[0]]
  assert val == (examples[min(pick0, pick1)], examples[max(pick0, pick1)])
  assert len(train) == 8 and not set(train) & set(val)


def test_zip_equals_folder(folder, tmp_path):
  root, _ = folder
  archive = make_zip(root, tmp_path / "pets.zip")
  from_folder = imagefolder.imagefolder_builder(root, size=SIZE, data_dir=tmp_path / "f")
  from_zip = imagefolder.imagefolder_builder(archive, size=SIZE, data_dir=tmp_path / "z")
  prepare_quietly(from_folder)
  skipped = prepare_quietly(from_zip)
  assert sorted(skipped)[0].startswith(f"imagefolder: skipping unreadable image {archive}/"
                                       "photos/")
  assert from_zip.builder_config.description == f"image zip {archive}"
  assert from_zip.info.features["label"].names == list(CLASSES)
  a, b = stored(from_folder, "train"), stored(from_zip, "train")
  assert sorted(b) == sorted(f"photos/{n}" for n in a)
  for name, (image, label) in a.items():
    np.testing.assert_array_equal(b[f"photos/{name}"][0], image, err_msg=name)
    assert b[f"photos/{name}"][1] == label


def test_train_test_val_layout(tmp_path):
  rng = np.random.default_rng(1)
  counts = {"train": 3, "test": 2, "val": 1}
  for split, n in counts.items():
    for c in ("a", "b") if split != "val" else ("b",):
      for i in range(n):
        _write(tmp_path / "set" / split / c / f"{i}.png",
               rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "PNG")
  (tmp_path / "set" / "train" / "loose.png").write_bytes(
      (tmp_path / "set" / "train" / "a" / "0.png").read_bytes())
  with pytest.warns(UserWarning, match=r"ignored 1 image file\(s\) outside class folders, "
                                       r"e\.g\. .*train/loose\.png"):
    builder = imagefolder.imagefolder_builder(tmp_path / "set", data_dir=tmp_path / "tfds")
  builder.download_and_prepare()
  assert builder.info.features["image"].shape == (8, 8, 3)  # The size all images share.
  assert {s: v.num_examples for s, v in builder.info.splits.items()} == {
      "train": 6, "test": 4, "validation": 1}
  assert {label for _, label in stored(builder, "validation").values()} == {1}  # Only b/.
  with pytest.raises(ValueError, match="has its own validation folder"), pytest.warns(
      UserWarning, match="ignored 1 image file"):
    imagefolder.imagefolder_builder(tmp_path / "set", validation_split=0.2)
  os.makedirs(tmp_path / "set" / "extra" / "a")
  (tmp_path / "set" / "extra" / "a" / "x.png").write_bytes(b"")
  with pytest.raises(ValueError, match=r"holds train/ and also \['extra'\]"):
    imagefolder.imagefolder_builder(tmp_path / "set")


def test_sizes_that_differ_need_a_size(folder):
  root, _ = folder
  with pytest.raises(ValueError, match=r"images in .* differ in size .*; give one size to "
                                       r"resize to: imagefolder:.*\?size=H,W"):
    imagefolder.imagefolder_builder(root)


def test_edited_folder_gets_new_records(tmp_path):
  root = tmp_path / "two"
  for c in ("x", "y"):
    _write(root / c / "0.png", np.full((4, 4, 3), 7, np.uint8), "PNG")
  name = imagefolder.imagefolder_builder(root).builder_config.name
  assert name.startswith("two_") and name == imagefolder.imagefolder_builder(
      root).builder_config.name
  _write(root / "y" / "1.png", np.zeros((4, 4, 3), np.uint8), "PNG")
  added = imagefolder.imagefolder_builder(root).builder_config.name
  os.utime(root / "y" / "1.png", ns=(1, 1))
  touched = imagefolder.imagefolder_builder(root).builder_config.name
  other = imagefolder.imagefolder_builder(root, validation_split=0.5).builder_config.name
  assert len({name, added, touched, other}) == 4


def test_get_dataset_of_a_path_and_of_imagefolder(folder):
  root, _ = folder
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", imagefolder.UnreadableImageWarning)
    builder, info = data.get_dataset(f"{root}?size={SIZE}&validation_split=0.25&seed=3")
    _, prefixed = data.get_dataset(f"imagefolder:{root}?size={SIZE}&validation_split=0.25&seed=3")
  assert info.name == f"imagefolder:{root}?size={SIZE}&validation_split=0.25&seed=3"
  assert prefixed == info
  assert info.source == f"image folder {root}" and info.class_names == CLASSES
  assert info.image_shape == (SIZE, SIZE, 3) and sum(info.num_examples.values()) == 19
  assert set(info.num_examples) == {"train", "validation"}
  batches = list(data.make_eval_iterator(builder, info, split="validation", global_batch_size=8,
                                         pp="value_range(0, 1)", process_index=0,
                                         process_count=1))
  assert sum(int(b["mask"].sum()) for b in batches) == info.num_examples["validation"]
  assert "imagefolder:<path>" in data.registered_datasets()
  with pytest.raises(ValueError, match=r"unknown option 'sise'; known: size, channels"):
    data.get_dataset(f"imagefolder:{root}?sise=3")
  with pytest.raises(ValueError, match=r"option channels must be 1 or 3, got 'rgb'"):
    data.get_dataset(f"{root}?channels=rgb")
  with pytest.raises(ValueError, match=r"unknown dataset '/no/such/folder'; known: .*; or a "
                                       r"path that imagefolder:<path> reads"):
    data.get_dataset("/no/such/folder")
  with pytest.raises(FileNotFoundError, match=r"imagefolder: /no/such/folder not found"):
    data.get_dataset("imagefolder:/no/such/folder")
  with pytest.raises(ValueError, match="takes no data_dir"):
    data.get_dataset(f"imagefolder:{root}", data_dir=root)


def test_trainer_runs_on_a_folder(folder, tmp_path):
  root, _ = folder
  c = digits_cnn.get_config()
  c.dataset = f"{root}?size={SIZE}&validation_split=0.25"
  c.eval_split = "validation"
  c.pp_train = "random_crop(16, pad=1)|flip_lr|value_range(0, 1)"
  c.pp_eval = "value_range(0, 1)"
  c.batch_size, c.eval_batch_size = 8, 8
  c.num_train_steps, c.eval_every_steps, c.log_every_steps = 4, 4, 1
  c.optimizer.warmup_steps = 1
  c.disable_progress_bar = True
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", imagefolder.UnreadableImageWarning)
    results = trainer.train(tasks.create_task(c), tmp_path / "run")
  assert results["steps"] == 4
  _, info = data.get_dataset(c.dataset)
  ev = results["eval"]
  assert ev["split"] == "validation"
  # 2 of each class listed (8, 7, 6 files), less a corrupt file that fell in validation.
  assert ev["num_examples"] == info.num_examples["validation"] in (4, 5, 6)
  assert sorted(ev["per_class"]) == list(CLASSES)
  losses = [json.loads(l)["loss"] for l in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines() if json.loads(l)["kind"] == "train" and "loss" in json.loads(l)]
  assert len(losses) == 4 and all(np.isfinite(losses))


# ------------------------------------------------------------------ CIFAR-10 from its JPEG zip


def make_cifar_zip(path, per_class=1):
  """A tiny stand-in for cifar10-jpeg.zip: {train,test}/<class>/<NNNN>.jpg, 32x32."""
  rng = np.random.default_rng(2)
  path.parent.mkdir(parents=True)
  with zipfile.ZipFile(path, "w") as z:
    for split in ("train", "test"):
      for name in cifar.CLASS_NAMES:
        for i in range(per_class):
          buf = io.BytesIO()
          Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
          z.writestr(f"{split}/{name}/{i:04d}.jpg", buf.getvalue())
  return path


def test_cifar10_falls_back_to_the_jpeg_zip(tmp_path, monkeypatch):
  archive = make_cifar_zip(tmp_path / "root" / "cifar10-jpeg" / "cifar10-jpeg.zip")
  monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "root"))
  _, info = data.get_dataset("cifar10")
  assert info.source == f"image zip {archive}"
  assert info.class_names == cifar.CLASS_NAMES and info.image_shape == (32, 32, 3)
  assert info.num_examples == {"train": 10, "test": 10}
  _, given = data.get_dataset("cifar10", data_dir=archive)
  assert given == info


@pytest.mark.slow
def test_cifar10_from_the_shared_zip(tmp_path, monkeypatch):
  shared = require_data("cifar10-jpeg")
  # A data root holding only the zip, so no python-version folder takes precedence.
  (tmp_path / "root").mkdir()
  os.symlink(shared, tmp_path / "root" / "cifar10-jpeg")
  monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "root"))
  t0 = time.perf_counter()
  builder, info = data.get_dataset("cifar10")
  print(f"prepared cifar10 from the JPEG zip in {time.perf_counter() - t0:.1f} s")
  assert info.num_examples == {"train": 50000, "test": 10000}
  assert info.class_names == cifar.CLASS_NAMES and info.image_shape == (32, 32, 3)
  assert info.source == f"image zip {shared / 'cifar10-jpeg.zip'}"
  got = stored(builder, "test")
  labels = np.array([l for _, l in got.values()])
  assert np.bincount(labels).tolist() == [1000] * 10
  with zipfile.ZipFile(shared / "cifar10-jpeg.zip") as z:
    for name in ("test/airplane/0000.jpg", "test/truck/0999.jpg", "test/cat/0500.jpg"):
      image, label = got[name]
      assert label == cifar.CLASS_NAMES.index(name.split("/")[1])
      np.testing.assert_array_equal(image, np.asarray(Image.open(z.open(name)).convert("RGB")))
