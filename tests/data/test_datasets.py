"""The dataset registry: registering a new dataset, lookup, prefixes and the errors."""

import pytest
import tensorflow_datasets as tfds

from jaxvision import data
from jaxvision.data import datasets, paths


@pytest.fixture
def scratch_registry(monkeypatch):
  """Registrations made in a test are undone after it."""
  monkeypatch.setattr(datasets, "_REGISTRY", dict(datasets._REGISTRY))


def test_builder_modules_register_the_known_names():
  assert data.registered_datasets() == ("digits", "mnist", "fashion_mnist", "cifar10",
                                        "idx:<folder>", "imagefolder:<path>")


def test_toy_dataset_registered_in_a_test(scratch_registry, tmp_path):
  calls = []

  @data.register_dataset("toy_digits")
  def _toy(name, data_dir):
    calls.append((name, data_dir))
    builder = datasets.prepare(tfds.testing.DummyMnist(data_dir=str(tmp_path / "tfds")))
    return builder, datasets.info_from_builder(builder, name, "toy source")

  builder, info = data.get_dataset("toy_digits", data_dir=tmp_path / "raw")
  assert calls == [("toy_digits", tmp_path / "raw")]
  assert info == data.DatasetInfo(name="toy_digits", source="toy source", num_classes=10,
                                  class_names=tuple(str(i) for i in range(10)),
                                  image_shape=(28, 28, 1),
                                  num_examples={"train": 20, "test": 20})
  batches = list(data.make_eval_iterator(builder, info, split="test", global_batch_size=8,
                                         pp="", process_index=0, process_count=1))
  assert len(batches) == 3 and sum(int(b["mask"].sum()) for b in batches) == 20
  assert data.registered_datasets()[-3:] == ("toy_digits", "idx:<folder>",
                                              "imagefolder:<path>")
  with pytest.raises(ValueError) as e:
    data.get_dataset("toy_digit")
  assert str(e.value) == ("unknown dataset 'toy_digit'; known: digits, mnist, fashion_mnist, "
                          "cifar10, toy_digits, idx:<folder>, imagefolder:<path>; or a path "
                          "that imagefolder:<path> reads")


def test_prefix_registration_gets_the_argument(scratch_registry):
  got = []

  @data.register_dataset("toy", prefix=True, arg="size", takes_data_dir=False)
  def _toy(arg, data_dir):
    got.append((arg, data_dir))
    return None, None

  data.get_dataset("toy:a:b")
  assert got == [("a:b", None)]
  assert "toy:<size>" in data.registered_datasets()
  with pytest.raises(ValueError, match=r"dataset 'toy:<size>' needs a size after 'toy:'"):
    data.get_dataset("toy:")
  with pytest.raises(ValueError, match="dataset 'toy:7' takes no data_dir"):
    data.get_dataset("toy:7", data_dir="/somewhere")
  with pytest.raises(ValueError, match="unknown dataset 'toy'"):
    data.get_dataset("toy")  # A prefix alone is not a name.


def test_bad_registrations(scratch_registry):
  with pytest.raises(ValueError, match="dataset 'digits' is already registered"):
    data.register_dataset("digits")(lambda name, data_dir: None)
  with pytest.raises(ValueError, match="dataset 'idx:<folder>' is already registered"):
    data.register_dataset("idx")(lambda name, data_dir: None)
  with pytest.raises(ValueError, match="without ':'"):
    data.register_dataset("a:b")
  with pytest.raises(ValueError, match="dataset 'x': serves_paths needs prefix=True"):
    data.register_dataset("x", serves_paths=lambda name: True)


def test_a_prefix_serving_paths_gets_the_whole_name(scratch_registry):
  got = []

  @data.register_dataset("toy", prefix=True, takes_data_dir=False,
                         serves_paths=lambda name: name.startswith("/toys/"))
  def _toy(arg, data_dir):
    got.append(arg)
    return None, None

  data.get_dataset("/toys/a?b=1")
  data.get_dataset("toy:/toys/c")
  data.get_dataset("digits")  # Registered names come first.
  assert got == ["/toys/a?b=1", "/toys/c"]
  with pytest.raises(ValueError, match=r"unknown dataset '/other'; known: .*; or a path that "
                                       r"imagefolder:<path> reads; or a path that toy:<arg> reads"):
    data.get_dataset("/other")


def test_idx_prefix_needs_a_folder_and_takes_no_data_dir(tmp_path, monkeypatch):
  monkeypatch.setenv(paths.TFDS_ENV_VAR, str(tmp_path / "tfds"))
  with pytest.raises(ValueError, match="dataset 'idx:<folder>' needs a folder after 'idx:'"):
    data.get_dataset("idx:")
  with pytest.raises(ValueError, match="takes no data_dir"):
    data.get_dataset(f"idx:{tmp_path}", data_dir=tmp_path)
