"""CocoFolder: tiny-coco against pycocotools' reading of the JSON; synthetic folders for errors."""

import json
import os
import pathlib

import numpy as np
import PIL.Image
import pytest
from pycocotools.coco import COCO

from tests.support import require_data
from jaxvision.data import detection as det
from jaxvision.data.builders import coco, voc

TINY_JSON = "instances_train2017_small.json"


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory):
  folder = require_data("tiny-coco/small_coco")
  data_dir = tmp_path_factory.getbasetemp() / "jaxvision_tfds"  # shared with other modules
  ds, info = det.load_detection_dataset(folder, "train", data_dir=data_dir)
  return folder, ds, info


def test_tiny_coco_counts_classes_and_id_map(tiny_coco):
  folder, ds, info = tiny_coco
  api = COCO(str(folder / TINY_JSON))
  cat_ids = sorted(api.getCatIds())
  assert info.format == "coco"
  assert info.num_examples == {"train": 16}
  assert info.category_ids == tuple(cat_ids) and len(cat_ids) == 80
  assert info.class_names == tuple(api.loadCats(i)[0]["name"] for i in cat_ids)
  assert info.class_names[:3] == ("person", "bicycle", "car")
  labels = np.concatenate([ex["objects"]["label"] for ex in ds.as_numpy_iterator()])
  assert len(labels) == 197
  assert len(set(labels.tolist())) == 37
  assert not any(info.dropped_boxes.values()) and not any(info.clipped_boxes.values())


def test_tiny_coco_examples_match_pycocotools(tiny_coco):
  folder, ds, info = tiny_coco
  api = COCO(str(folder / TINY_JSON))
  seen = set()
  for ex in ds.as_numpy_iterator():
    image_id = int(ex["image/id"])
    seen.add(image_id)
    meta = api.loadImgs(image_id)[0]
    h, w = meta["height"], meta["width"]
    assert ex["image/filename"].decode() == meta["file_name"]
    assert ex["image"].shape == (h, w, 3)
    assert (ex["image/height"], ex["image/width"]) == (h, w)
    anns = api.loadAnns(api.getAnnIds(imgIds=[image_id]))
    ref = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
    ref_xyxy = np.clip(np.concatenate([ref[:, :2], ref[:, :2] + ref[:, 2:]], 1), 0, [w, h, w, h])
    ref_yxyx = ref_xyxy[:, [1, 0, 3, 2]] / [h, w, h, w]
    objects = ex["objects"]
    np.testing.assert_allclose(objects["bbox"], ref_yxyx, atol=1e-6)
    np.testing.assert_array_equal(objects["id"], [a["id"] for a in anns])
    np.testing.assert_allclose(objects["area"], [a["area"] for a in anns], rtol=1e-6)
    np.testing.assert_array_equal(objects["is_crowd"], [bool(a["iscrowd"]) for a in anns])
    mapped = [info.category_ids[label] for label in objects["label"]]
    assert mapped == [a["category_id"] for a in anns]
  assert seen == set(api.getImgIds())


def test_pipeline_skips_the_crowd_box(tiny_coco):
  _, ds, _ = tiny_coco
  crowd = sum(int(ex["objects"]["is_crowd"].sum()) for ex in ds.as_numpy_iterator())
  assert crowd == 1
  pipe = det.make_detection_pipeline(ds, canvas_size=64, max_boxes=64, batch_size=16,
                                     train=False)
  (batch,) = list(pipe.as_numpy_iterator())
  assert batch["mask"].sum() == 197 - crowd


# ---------------------------------------------------------------------------------------------
# Synthetic COCO folders

CATEGORIES = [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}, {"id": 7, "name": "train"}]


def write_coco(root, annotations=(), *, images=None, json_name="instances_train2017.json",
               image_dir="train2017", categories=CATEGORIES, raw=None):
  """A COCO folder with two 40x60 (h x w) images, ids 11 and 12."""
  root = pathlib.Path(root)
  (root / image_dir).mkdir(parents=True, exist_ok=True)
  if images is None:
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 40, "width": 60} for i in (11, 12)]
  for image in images:
    if "file_name" in image:
      PIL.Image.new("RGB", (60, 40), (10, 200, 30)).save(root / image_dir / image["file_name"])
  path = root / json_name
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(raw if raw is not None else json.dumps(
      {"images": images, "annotations": list(annotations), "categories": categories}))
  return root


def ann(i, image_id, category_id, bbox, **kw):
  return dict(id=i, image_id=image_id, category_id=category_id, bbox=bbox, iscrowd=0,
              area=bbox[2] * bbox[3], **kw)


def load(folder, tmp_path, split="train", **kwargs):
  ds, info = det.load_detection_dataset(folder, split, data_dir=tmp_path / "tfds", **kwargs)
  return {int(ex["image/id"]): ex for ex in ds.as_numpy_iterator()}, info


def test_labels_follow_sorted_category_ids_and_bad_boxes_are_handled(tmp_path):
  folder = write_coco(tmp_path / "syn", [
      ann(1, 11, 7, [10, 5, 20, 10]),
      ann(2, 11, 1, [50, 30, 15, 20]),     # sticks out by 5 x 10 px: clipped
      ann(3, 12, 3, [30, 10, 0, 8]),       # zero width: dropped
      ann(4, 12, 3, [59.5, 0, 1.2, 40]),   # 0.7 px overshoot: clipped silently
  ])
  with pytest.warns(voc.DetectionDataWarning) as record:
    examples, info = load(folder, tmp_path)
  messages = [str(w.message) for w in record if issubclass(w.category, voc.DetectionDataWarning)]
  assert len(messages) == 2, messages
  assert any("instances_train2017.json annotations[1] (id 2, image 11.jpg)" in m and
             "clipped to (xmin=50, ymin=30, xmax=60, ymax=40)" in m for m in messages)
  assert any("annotations[2] (id 3, image 12.jpg)" in m and "zero area" in m for m in messages)
  assert info.class_names == ("person", "car", "train") and info.category_ids == (1, 3, 7)
  np.testing.assert_array_equal(examples[11]["objects"]["label"], [2, 0])
  np.testing.assert_allclose(examples[11]["objects"]["bbox"],
                             [[5 / 40, 10 / 60, 15 / 40, 30 / 60], [30 / 40, 50 / 60, 1, 1]],
                             atol=1e-6)
  np.testing.assert_array_equal(examples[12]["objects"]["id"], [4])
  np.testing.assert_allclose(examples[12]["objects"]["bbox"], [[0, 59.5 / 60, 1, 1]], atol=1e-6)
  assert [len(v) for v in info.dropped_boxes.values()] == [1]


def test_discovery_pairs_json_and_image_folder_and_names_splits(tmp_path):
  folder = write_coco(tmp_path / "full", [ann(1, 11, 1, [1, 1, 5, 5])],
                      json_name="annotations/instances_val2017.json", image_dir="val2017")
  write_coco(folder, [ann(1, 12, 3, [1, 1, 5, 5])],
             json_name="annotations/instances_train2017.json", image_dir="train2017")
  splits = coco.discover_coco_splits(folder)
  assert [(s, pathlib.Path(a).name, pathlib.Path(i).name) for s, a, i in splits] == [
      ("train", "instances_train2017.json", "train2017"),
      ("val", "instances_val2017.json", "val2017")]
  examples, info = load(folder, tmp_path, split="val")
  assert sorted(examples) == [11, 12] and info.num_examples == {"train": 2, "val": 2}
  assert examples[11]["objects"]["bbox"].shape == (1, 4)
  assert examples[12]["objects"]["bbox"].shape == (0, 4)  # images without annotations are kept
  lonely = write_coco(tmp_path / "lonely", [], json_name="instances_train2017.json",
                      image_dir="train2017")
  write_coco(lonely, [], json_name="instances_val2017.json", image_dir="pictures")
  with pytest.raises(FileNotFoundError,
                     match=r"instances_val2017\.json: expected one image folder"):
    coco.discover_coco_splits(lonely)
  explicit = coco.CocoFolder(lonely, splits={"val": ("instances_val2017.json", "pictures")},
                             data_dir=tmp_path / "tfds")
  assert [s for s, _, _ in explicit.builder_config.splits] == ["val"]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(raw="{not json"), ValueError, r"instances_train2017\.json: malformed JSON"),
    (dict(raw='{"images": [], "annotations": []}'), ValueError,
     r"missing field\(s\) \['categories'\]"),
    (dict(annotations=[{"id": 5, "image_id": 11, "category_id": 1}]), ValueError,
     r"annotations\[0\] \(id 5\): missing field\(s\) \['bbox'\]"),
    (dict(annotations=[ann(5, 11, 2, [1, 1, 5, 5])]), ValueError, "category_id 2 is not in"),
    (dict(annotations=[ann(5, 99, 1, [1, 1, 5, 5])]), ValueError, "image_id 99 is not in"),
    (dict(annotations=[dict(ann(5, 11, 1, [1, 1, 5, 5]), bbox=[1, "a", 5, 5])]), ValueError,
     r"annotations\[0\] \(id 5, image 11\.jpg\): bbox value is 'a'"),
    (dict(annotations=[dict(ann(5, 11, 1, [1, 1, 5, 5]), bbox=[1, 1, 5])]), ValueError,
     r"bbox is \[1, 1, 5\], expected \[x, y, width, height\]"),
    (dict(images=[{"id": 11, "file_name": "11.jpg", "height": 41, "width": 60}]),
     ValueError, r"image 11 is 60x41 \(w x h\) in the JSON but 11\.jpg is 60x40"),
    (dict(images=[{"id": 11, "height": 40, "width": 60},
                  {"id": 12, "file_name": "12.jpg", "height": 40, "width": 60}]), ValueError,
     r"images\[0\]: missing field\(s\) \['file_name'\]"),
])
def test_malformed_json_raises_naming_the_file(tmp_path, kwargs, error, match):
  folder = write_coco(tmp_path / "bad", **kwargs)
  with pytest.raises(error, match=match):
    load(folder, tmp_path)


def test_missing_image_file_or_folder_raise_file_not_found(tmp_path):
  folder = write_coco(tmp_path / "syn", [ann(1, 11, 1, [1, 1, 5, 5])])
  (folder / "train2017" / "12.jpg").unlink()
  with pytest.raises(FileNotFoundError, match=r"instances_train2017\.json: image file .*12\.jpg"):
    load(folder, tmp_path)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="not a COCO folder"):
    coco.CocoFolder(tmp_path / "empty", data_dir=tmp_path / "tfds")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    coco.CocoFolder(tmp_path / "nope", data_dir=tmp_path / "tfds")


def test_truncated_jpeg_is_skipped_with_a_warning_naming_it(tmp_path):
  import tensorflow as tf
  folder = write_coco(tmp_path / "syn", [ann(1, 11, 1, [1, 1, 5, 5]), ann(2, 12, 3, [2, 2, 9, 9])])
  bad = folder / "train2017" / "12.jpg"
  noise = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
  PIL.Image.fromarray(noise).save(bad, quality=95)
  bad.write_bytes(bad.read_bytes()[:int(bad.stat().st_size * 0.4)])
  with PIL.Image.open(bad) as im:
    assert im.size == (60, 40)  # the header reads: a header-only check passes it
  with pytest.raises(tf.errors.InvalidArgumentError):  # what the input pipeline would meet
    tf.io.decode_jpeg(bad.read_bytes())
  with pytest.warns(voc.DetectionDataWarning, match=r"12\.jpg is not a readable image "
                    r"\(OSError: image file is truncated.*image skipped"):
    examples, info = load(folder, tmp_path)
  assert sorted(examples) == [11] and info.num_examples == {"train": 1}
  (message,) = info.skipped_images["train"]
  assert "instances_train2017.json" in message and str(bad) in message
  np.testing.assert_allclose(examples[11]["objects"]["bbox"], [[1 / 40, 1 / 60, 6 / 40, 6 / 60]],
                             atol=1e-6)


def test_annotation_json_edited_in_place_is_prepared_again(tmp_path):
  folder = write_coco(tmp_path / "syn", [ann(1, 11, 1, [10, 5, 20, 10])])
  path = folder / "instances_train2017.json"
  examples, info = load(folder, tmp_path)
  np.testing.assert_allclose(examples[11]["objects"]["bbox"], [[5 / 40, 10 / 60, 15 / 40, 30 / 60]],
                             atol=1e-6)
  stat = path.stat()
  edited = path.read_text().replace("[10, 5, 20, 10]", "[12, 5, 20, 10]")
  assert len(edited) == stat.st_size
  path.write_text(edited)
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
  examples, again = load(folder, tmp_path)
  np.testing.assert_allclose(examples[11]["objects"]["bbox"], [[5 / 40, 12 / 60, 15 / 40, 32 / 60]],
                             atol=1e-6)
  assert again.builder.data_dir != info.builder.data_dir
  # An image replaced by another of the same size (its mtime changes) is seen too.
  image = folder / "train2017" / "11.jpg"
  PIL.Image.new("RGB", (60, 40), (200, 0, 0)).save(image)
  os.utime(image, ns=(1, stat.st_mtime_ns + 10**9))
  _, third = load(folder, tmp_path)
  assert third.builder.data_dir not in (info.builder.data_dir, again.builder.data_dir)
