"""VocFolder: BCCD against its XML and README figures; synthetic folders for the error paths."""

import os
import pathlib
import warnings
import xml.etree.ElementTree as ET

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from tests.support import require_data
from jaxvision.data import detection as det
from jaxvision.data.builders import voc

# From /work/shared/data/bccd/SOURCE.txt and the data README.
BCCD_SPLITS = {"train": 205, "val": 87, "test": 72}
BCCD_BOXES = 4888
BCCD_CLASS_COUNTS = {"RBC": 4155, "WBC": 372, "Platelets": 361}
BCCD_ZERO_AREA = {"BloodImage_00338.xml": "RBC", "BloodImage_00343.xml": "RBC"}


@pytest.fixture(scope="session")
def tfds_session_dir(tmp_path_factory):
  """One prepared-data dir for the session: each dataset is prepared once, by whichever test
  module asks first (the builder reuses prepared records)."""
  return tmp_path_factory.getbasetemp() / "jaxvision_tfds"


@pytest.fixture(scope="session")
def bccd(tfds_session_dir):
  folder = require_data("bccd/BCCD")
  with warnings.catch_warnings():  # the 2 zero-area boxes; checked through info.dropped_boxes
    warnings.simplefilter("ignore", voc.DetectionDataWarning)
    splits = {s: det.load_detection_dataset(folder, s, data_dir=tfds_session_dir)
              for s in BCCD_SPLITS}
  return folder, splits


def xml_reference(xml_path):
  """Independent parse: (filename, [(name, xmin, ymin, xmax, ymax, truncated, difficult)])."""
  root = ET.parse(xml_path).getroot()
  objects = []
  for obj in root.iter("object"):
    bb = obj.find("bndbox")
    coords = [float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")]
    objects.append((obj.find("name").text.strip(), *coords,
                    obj.find("truncated").text == "1", obj.find("difficult").text == "1"))
  return root.find("filename").text, objects


def test_bccd_splits_classes_and_box_counts(bccd):
  _, splits = bccd
  info = splits["train"][1]
  assert info.format == "voc"
  assert info.class_names == ("Platelets", "RBC", "WBC")
  assert info.category_ids == (0, 1, 2)
  assert info.num_examples == BCCD_SPLITS
  counts = dict.fromkeys(info.class_names, 0)
  total = 0
  for split, (ds, _) in splits.items():
    n_images = 0
    for ex in ds.as_numpy_iterator():
      n_images += 1
      total += len(ex["objects"]["label"])
      for label in ex["objects"]["label"]:
        counts[info.class_names[label]] += 1
    assert n_images == BCCD_SPLITS[split]
  dropped = [m for msgs in info.dropped_boxes.values() for m in msgs]
  assert len(dropped) == len(BCCD_ZERO_AREA)
  for name, cls in BCCD_ZERO_AREA.items():
    assert sum(name in m and repr(cls) in m and "zero area" in m for m in dropped) == 1
  assert total == BCCD_BOXES - len(dropped)
  expected = dict(BCCD_CLASS_COUNTS, RBC=BCCD_CLASS_COUNTS["RBC"] - len(dropped))
  assert counts == expected
  assert not any(info.clipped_boxes.values())


def test_bccd_examples_match_their_xml(bccd):
  folder, splits = bccd
  ids = sorted(p.stem for p in (folder / "Annotations").glob("*.xml"))
  for split, (ds, info) in splits.items():
    listed = (folder / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    seen = []
    for ex in ds.as_numpy_iterator():
      stem = ex["image/filename"].decode().rsplit(".", 1)[0]
      seen.append(stem)
      filename, objects = xml_reference(folder / "Annotations" / f"{stem}.xml")
      assert ex["image/filename"].decode() == filename
      assert ex["image/id"] == ids.index(stem)
      assert ex["image"].shape == (480, 640, 3) and ex["image"].dtype == np.uint8
      assert (ex["image/height"], ex["image/width"]) == (480, 640)
      objects = [o for o in objects if o[3] > o[1] and o[4] > o[2]]  # zero-area ones dropped
      ref = np.array([o[1:5] for o in objects], np.float64)
      ref_yxyx = ref[:, [1, 0, 3, 2]] / [480, 640, 480, 640]
      np.testing.assert_allclose(ex["objects"]["bbox"], ref_yxyx, atol=1e-6)
      assert [info.class_names[i] for i in ex["objects"]["label"]] == [o[0] for o in objects]
      assert list(ex["objects"]["is_truncated"]) == [o[5] for o in objects]
      assert list(ex["objects"]["is_difficult"]) == [o[6] for o in objects]
    assert sorted(seen) == sorted(listed)


# ---------------------------------------------------------------------------------------------
# Synthetic VOC folders


def write_voc(root, images, *, splits=None, size=(40, 60)):
  """Writes a VOC folder. ``images``: {stem: [(name, xmin, ymin, xmax, ymax), ...] or raw XML}."""
  root = pathlib.Path(root)
  for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
    (root / sub).mkdir(parents=True, exist_ok=True)
  h, w = size
  for stem, objects in images.items():
    PIL.Image.new("RGB", (w, h), (90, 20, 200)).save(root / "JPEGImages" / f"{stem}.jpg")
    if isinstance(objects, str):
      xml = objects
    else:
      objs = "".join(
          f"<object><name>{n}</name><truncated>0</truncated><difficult>0</difficult><bndbox>"
          f"<xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
          for n, a, b, c, d in objects)
      xml = (f"<annotation><filename>{stem}.jpg</filename><size><width>{w}</width>"
             f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>")
    (root / "Annotations" / f"{stem}.xml").write_text(xml)
  for split, stems in ({"train": list(images)} if splits is None else splits).items():
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
  return root


def prepare(folder, data_dir, **kwargs):
  builder = voc.VocFolder(folder, data_dir=data_dir, **kwargs)
  builder.download_and_prepare()
  return builder


def test_zero_area_and_outside_boxes_are_dropped_or_clipped_with_warnings(tmp_path):
  folder = write_voc(tmp_path / "syn", {
      "img_a": [("cat", 5, 5, 20, 20), ("cat", 30, 10, 30, 25), ("dog", 50, 30, 70, 45)],
      "img_b": [("dog", -0.5, 2, 10, 40.8), ("dog", 61, 0, 80, 10)],
  })
  with pytest.warns(voc.DetectionDataWarning) as record:
    builder = prepare(folder, tmp_path / "tfds")
  messages = [str(w.message) for w in record if issubclass(w.category, voc.DetectionDataWarning)]
  assert len(messages) == 3, messages
  assert any("img_a.xml object #1 'cat'" in m and "zero area" in m and "xmin=30" in m
             for m in messages)
  assert any("img_a.xml object #2 'dog'" in m and "clipped to (xmin=50, ymin=30, xmax=60, "
             "ymax=40)" in m for m in messages)
  assert any("img_b.xml object #1 'dog'" in m and "zero area" in m for m in messages)
  assert len(builder.info.metadata["dropped_boxes"]["train"]) == 2
  assert len(builder.info.metadata["clipped_boxes"]["train"]) == 1
  examples = {ex["image/filename"].decode(): ex
              for ex in builder.as_dataset(split="train").as_numpy_iterator()}
  np.testing.assert_allclose(examples["img_a.jpg"]["objects"]["bbox"],
                             [[5 / 40, 5 / 60, 20 / 40, 20 / 60], [30 / 40, 50 / 60, 1, 1]],
                             atol=1e-6)
  # Sub-pixel overshoot (-0.5, 40.8) is clipped silently.
  np.testing.assert_allclose(examples["img_b.jpg"]["objects"]["bbox"],
                             [[2 / 40, 0, 1, 10 / 60]], atol=1e-6)
  assert builder.info.features["objects"]["label"].names == ["cat", "dog"]


@pytest.mark.parametrize("xml, match", [
    ("<annotation><object><name>cat</name>", r"img_a\.xml: malformed XML"),
    ("<annotation><object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
     "<xmax>5</xmax></bndbox></object></annotation>",
     r"img_a\.xml object #0 'cat': missing <ymax>"),
    ("<annotation><object><name>cat</name><bndbox><xmin>1</xmin><ymin>one</ymin><xmax>5</xmax>"
     "<ymax>5</ymax></bndbox></object></annotation>", r"img_a\.xml.*<ymin> is 'one'"),
    ("<annotation><object><bndbox><xmin>1</xmin></bndbox></object></annotation>",
     r"img_a\.xml object #0: missing <name>"),
    ("<annotation><size><width>61</width><height>40</height></size></annotation>",
     r"img_a\.xml: <size> says 61x40"),
])
def test_malformed_xml_raises_naming_the_file(tmp_path, xml, match):
  folder = write_voc(tmp_path / "bad", {"img_a": xml})
  with pytest.raises(ValueError, match=match):
    prepare(folder, tmp_path / "tfds", class_names=["cat"])


def test_missing_folder_split_annotation_or_image_raise_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    voc.VocFolder(tmp_path / "nope", data_dir=tmp_path / "tfds")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="expected the subfolder Annotations/"):
    voc.VocFolder(tmp_path / "empty", data_dir=tmp_path / "tfds")
  no_splits = write_voc(tmp_path / "nosplit", {"a": [("cat", 1, 1, 5, 5)]}, splits={})
  with pytest.raises(FileNotFoundError, match=r"Main: expected split files train\.txt"):
    prepare(no_splits, tmp_path / "tfds")
  missing_xml = write_voc(tmp_path / "noxml", {"a": [("cat", 1, 1, 5, 5)]},
                          splits={"train": ["a", "ghost"]})
  with pytest.raises(FileNotFoundError, match=r"train\.txt: image id 'ghost' has no annotation"):
    prepare(missing_xml, tmp_path / "tfds")
  no_image = write_voc(tmp_path / "noimg", {"a": [("cat", 1, 1, 5, 5)]})
  (no_image / "JPEGImages" / "a.jpg").unlink()
  with pytest.raises(FileNotFoundError, match=r"a\.xml: image file not found"):
    prepare(no_image, tmp_path / "tfds")


def test_explicit_class_names_order_labels_and_reject_unknown(tmp_path):
  folder = write_voc(tmp_path / "syn", {"a": [("cat", 1, 1, 5, 5), ("dog", 2, 2, 9, 9)]},
                     splits={"train": ["a"], "val": ["a"]})
  builder = prepare(folder, tmp_path / "tfds", class_names=["dog", "cat", "bird"])
  assert set(builder.info.splits) == {"train", "val"}
  (ex,) = builder.as_dataset(split="val").as_numpy_iterator()
  assert list(ex["objects"]["label"]) == [1, 0]
  with pytest.raises(ValueError, match=r"a\.xml object #1 'dog': class 'dog' is not in"):
    prepare(folder, tmp_path / "tfds", class_names=["cat"])
  with pytest.raises(ValueError, match="distinct"):
    voc.VocFolder(folder, class_names=["cat", "cat"], data_dir=tmp_path / "tfds")


def test_same_folder_name_in_two_places_never_collides(tmp_path, monkeypatch):
  one = write_voc(tmp_path / "x" / "data", {"a": [("cat", 1, 1, 5, 5)]})
  two = write_voc(tmp_path / "y" / "data", {"a": [("dog", 1, 1, 5, 5)], "b": []})
  monkeypatch.setenv("JAXVISION_TFDS_DIR", str(tmp_path / "env_tfds"))
  ds1, info1 = det.load_detection_dataset(one, "train")  # data_dir from the env var
  ds2, info2 = det.load_detection_dataset(two, "train")
  assert info1.builder.data_dir != info2.builder.data_dir
  assert str(tmp_path / "env_tfds") in str(info1.builder.data_dir)
  assert info1.builder.builder_config.name.startswith("data_")
  assert (info1.class_names, info1.num_examples) == (("cat",), {"train": 1})
  assert (info2.class_names, info2.num_examples) == (("dog",), {"train": 2})
  # Reloading an unchanged folder restores class names from the prepared records, without
  # parsing the XML again.
  with monkeypatch.context() as m:
    m.setattr(voc, "parse_voc_xml", lambda path: pytest.fail(f"parsed {path}"))
    _, again = det.load_detection_dataset(one, "train")
  assert again.class_names == ("cat",)
  assert again.builder.data_dir == info1.builder.data_dir


def test_load_by_name_under_data_root_and_format_detection(tmp_path, monkeypatch):
  write_voc(tmp_path / "root" / "myvoc", {"a": [("cat", 1, 1, 5, 5)]})
  monkeypatch.setenv("JAXVISION_DATA_DIR", str(tmp_path / "root"))
  ds, info = det.load_detection_dataset("myvoc", "train", data_dir=tmp_path / "tfds")
  assert info.format == "voc" and info.num_examples == {"train": 1}
  with pytest.raises(FileNotFoundError, match="'nothing_here' not found"):
    det.load_detection_dataset("nothing_here", "train", data_dir=tmp_path / "tfds")
  (tmp_path / "root" / "other").mkdir()
  with pytest.raises(FileNotFoundError, match="expected a Pascal VOC folder"):
    det.load_detection_dataset("other", "train", data_dir=tmp_path / "tfds")
  with pytest.raises(ValueError, match="format must be one of"):
    det.load_detection_dataset("myvoc", "train", format="yolo", data_dir=tmp_path / "tfds")


def test_builder_pickles_and_features_match_tfds_voc_names(tmp_path):
  import pickle
  folder = write_voc(tmp_path / "syn", {"a": [("cat", 1, 1, 5, 5)]})
  builder = prepare(folder, tmp_path / "tfds")
  clone = pickle.loads(pickle.dumps(builder))
  assert clone.data_dir == builder.data_dir
  objects = builder.info.features["objects"]
  assert isinstance(objects["bbox"], tfds.features.BBoxFeature)
  assert isinstance(objects["label"], tfds.features.ClassLabel)
  assert {"image", "image/filename", "image/id", "objects"} <= set(builder.info.features)
  with warnings.catch_warnings():
    warnings.simplefilter("error", voc.DetectionDataWarning)  # clean data: no warning
    prepare(write_voc(tmp_path / "clean", {"a": [("cat", 0, 0, 60, 40)]}), tmp_path / "tfds")


def truncate_to_a_readable_header(path, fraction=0.4):
  """Overwrites the JPEG at ``path`` with a noisy image cut to ``fraction`` of its bytes; the
  header still reads (the size is known) but the compressed data ends early."""
  with PIL.Image.open(path) as im:
    size = im.size
  noise = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  PIL.Image.fromarray(noise).save(path, quality=95)
  data = path.read_bytes()
  path.write_bytes(data[:int(len(data) * fraction)])
  with PIL.Image.open(path) as im:
    assert im.size == size  # what a header-only check sees: a fine image


def test_truncated_jpeg_is_skipped_with_a_warning_naming_it(tmp_path):
  import tensorflow as tf
  folder = write_voc(tmp_path / "syn", {"good": [("cat", 1, 1, 5, 5)],
                                        "bad": [("cat", 2, 2, 9, 9)]},
                     splits={"train": ["good", "bad"], "val": ["good"]})
  bad = folder / "JPEGImages" / "bad.jpg"
  truncate_to_a_readable_header(bad)
  with pytest.raises(tf.errors.InvalidArgumentError):  # what the input pipeline would meet
    tf.io.decode_jpeg(bad.read_bytes())
  with pytest.warns(voc.DetectionDataWarning, match=r"bad\.jpg is not a readable image "
                    r"\(OSError: image file is truncated.*image skipped"):
    ds, info = det.load_detection_dataset(folder, "train", data_dir=tmp_path / "tfds")
  assert info.num_examples == {"train": 1, "val": 1}
  assert [len(info.skipped_images[s]) for s in ("train", "val")] == [1, 0]
  assert "bad.xml" in info.skipped_images["train"][0]
  (example,) = list(ds.map(det.from_tfds).as_numpy_iterator())  # decodes without an error
  assert example["image"].shape == (40, 60, 3)
  np.testing.assert_allclose(example["boxes"], [[1, 1, 5, 5]], atol=1e-4)
  # A split left with no readable image is an error naming its split file and the image.
  (folder / "ImageSets" / "Main" / "val.txt").write_text("bad\n")
  with pytest.warns(voc.DetectionDataWarning), pytest.raises(
      ValueError, match=r"val\.txt: split 'val' has no readable image: all 1 of its images are "
      r"unreadable, e\.g\. .*bad\.jpg"):
    det.load_detection_dataset(folder, "val", data_dir=tmp_path / "tfds")


def test_annotation_edited_in_place_is_prepared_again(tmp_path):
  folder = write_voc(tmp_path / "syn", {"a": [("cat", 1, 1, 5, 5)]})
  xml = folder / "Annotations" / "a.xml"
  ds, info = det.load_detection_dataset(folder, "train", data_dir=tmp_path / "tfds")
  (before,) = list(ds.map(det.from_tfds).as_numpy_iterator())
  np.testing.assert_allclose(before["boxes"], [[1, 1, 5, 5]], atol=1e-4)
  stat = xml.stat()
  edited = xml.read_text().replace("<xmin>1</xmin>", "<xmin>3</xmin>")
  assert len(edited) == stat.st_size
  xml.write_text(edited)
  os.utime(xml, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
  ds, again = det.load_detection_dataset(folder, "train", data_dir=tmp_path / "tfds")
  (after,) = list(ds.map(det.from_tfds).as_numpy_iterator())
  np.testing.assert_allclose(after["boxes"], [[3, 1, 5, 5]], atol=1e-4)
  assert again.builder.data_dir != info.builder.data_dir
  # A split file edited in place is seen too.
  write_voc(folder, {"b": [("dog", 1, 1, 5, 5)]}, splits={"train": ["b"]})
  _, third = det.load_detection_dataset(folder, "train", data_dir=tmp_path / "tfds")
  assert third.num_examples == {"train": 1} and third.class_names == ("cat", "dog")
  assert len({info.builder.data_dir, again.builder.data_dir, third.builder.data_dir}) == 3
