"""TFDS builder for a local COCO detection folder (instances JSON + image folder).

Layout: ``instances_<split>.json`` files in the folder or in its ``annotations/`` subfolder,
and for each an image folder whose name matches ``<split>`` ignoring case and punctuation
(``instances_train2017.json`` <-> ``train2017/``; ``instances_train2017_small.json`` <->
``train_2017_small/``). A folder with one JSON and one image folder pairs them whatever their
names. The TFDS split is ``train``/``val``/``test`` when ``<split>`` starts with that word,
else ``<split>`` itself. Pass ``splits=`` to name the pairs explicitly.

Features follow TFDS's ``coco/2017``, plus the image size:

  image               uint8 [H, W, 3] (JPEG bytes stored as they are on disk)
  image/filename      str, the COCO ``file_name``
  image/id            int64, the COCO image id
  image/height, image/width  int64
  objects             Sequence of
    id                int64, the COCO annotation id
    area              float32, the COCO ``area`` (segmentation area; ``w*h`` when absent).
                      TFDS's coco rounds it to int64; we keep the value pycocotools uses.
    bbox              tfds.features.BBoxFeature: normalized ``(ymin, xmin, ymax, xmax)``
    label             ClassLabel: contiguous 0..K-1 over the JSON's categories sorted by id
    is_crowd          bool

Label ``i`` is COCO category ``info.metadata["category_ids"][i]`` (all categories of the
JSON, used or not, so tiny-coco keeps COCO's 80 classes); evaluation maps predictions back
with it. Boxes are clipped/dropped as in ``voc.py`` (``DetectionDataWarning``, recorded in
``info.metadata["clipped_boxes"/"dropped_boxes"]``). Images without annotations are kept
with empty ``objects``. Every image is decoded in full when preparing: one whose content does
not decode (a truncated JPEG) is skipped with a ``DetectionDataWarning`` naming the file
(``info.metadata["skipped_images"]``); a missing image file is an error.

Prepared records are keyed by content (:func:`coco_content_key`: the JSON files and every
file of the image folders), so editing an annotation file or an image in place prepares the
folder again, into a new directory.

Note: the JSON is parsed whenever the builder is constructed before its data is prepared
(for the category list); once prepared, names and ids are restored from the prepared dir.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from collections.abc import Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds

from jaxvision.data.builders import local, voc

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _norm(name: str) -> str:
  return re.sub(r"[^a-z0-9]", "", name.lower())


def discover_coco_splits(root: pathlib.Path) -> tuple[tuple[str, str, str], ...]:
  """Pairs each ``instances_*.json`` under ``root`` with its image folder.

  Returns:
    ``((split, annotation_file, image_dir), ...)`` with absolute paths, sorted by split.

  Raises:
    FileNotFoundError: no annotation JSON, or no (or several) matching image folders.
  """
  jsons = sorted(root.glob("instances_*.json")) + sorted(root.glob("annotations/instances_*.json"))
  if not jsons:
    raise FileNotFoundError(
        f"{root} is not a COCO folder: expected instances_<split>.json in it or in "
        f"annotations/; found {sorted(p.name for p in root.iterdir())}")
  image_dirs = [d for d in sorted(root.iterdir())
                if d.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in d.iterdir())]
  splits = {}
  for path in jsons:
    stem = path.stem[len("instances_"):]
    matches = [d for d in image_dirs if _norm(d.name) == _norm(stem)]
    if not matches and len(jsons) == 1 and len(image_dirs) == 1:
      matches = image_dirs
    if len(matches) != 1:
      raise FileNotFoundError(
          f"{path}: expected one image folder named like {stem!r} in {root}; folders with "
          f"images: {[d.name for d in image_dirs]}")
    name = next((w for w in ("train", "val", "test") if _norm(stem).startswith(w)), None)
    if name is None or name in splits:
      name = _norm(stem)
    splits[name] = (str(path.resolve()), str(matches[0].resolve()))
  return tuple((s, a, i) for s, (a, i) in sorted(splits.items()))


def coco_content_key(split_triples: tuple[tuple[str, str, str], ...]) -> list[str]:
  """Lines identifying the content of a COCO folder's splits: each annotation JSON by a hash
  of its bytes when up to 1 MiB, else by size and modification time, and every file in the
  image folders by size and modification time (``local.file_stamp``)."""
  key = []
  for split, ann, image_dir in split_triples:
    key.append(f"{split}\t{ann}\t{local.file_stamp(ann)}")
    key += [f"{split}\t{image_dir}/{line}"
            for line in local.folder_stamps(image_dir, suffixes=IMAGE_SUFFIXES, hash_up_to=0)]
  return key


def _require(record: Mapping, keys: tuple[str, ...], *, where: str) -> None:
  missing = [k for k in keys if k not in record]
  if missing:
    raise ValueError(f"{where}: missing field(s) {missing} (has {sorted(record)})")


def _finite(value, *, what: str, where: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ValueError(f"{where}: {what} is {value!r}, expected a finite number")
  return float(value)


def load_coco_json(path: pathlib.Path) -> dict:
  """Reads and checks an instances JSON (top-level keys, category records).

  Raises:
    ValueError: the file is not JSON or lacks ``images``/``annotations``/``categories`` or a
      category lacks ``id``/``name``; the message names the file.
  """
  try:
    with open(path) as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: malformed JSON ({e})") from e
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
  _require(data, ("images", "annotations", "categories"), where=str(path))
  for i, cat in enumerate(data["categories"]):
    _require(cat, ("id", "name"), where=f"{path} categories[{i}]")
  if not data["categories"]:
    raise ValueError(f"{path}: 'categories' is empty")
  return data


def coco_categories(data: dict, *, path: pathlib.Path) -> tuple[tuple[int, ...], tuple[str, ...]]:
  """Category ids sorted ascending and their names (label i <-> ids[i])."""
  cats = sorted(data["categories"], key=lambda c: c["id"])
  ids = tuple(int(c["id"]) for c in cats)
  names = tuple(str(c["name"]) for c in cats)
  for what, values in (("id", ids), ("name", names)):
    if len(set(values)) != len(values):
      raise ValueError(f"{path}: duplicate category {what}s in {list(values)}")
  return ids, names


class CocoFolder(local.LocalBuilder):
  """COCO instances JSON + image folder -> TFDS records, one builder config per folder.

  Usage::

    builder = CocoFolder("/data/small_coco", data_dir=paths.tfds_dir())
    builder.download_and_prepare()       # reads the folder; no download
    ds = builder.as_dataset(split="train")
    category_ids = builder.info.metadata["category_ids"]   # label -> COCO category id

  Args:
    source_dir: the COCO folder.
    splits: optional ``{split: (annotation_json, image_dir)}`` (paths absolute or relative to
      ``source_dir``); default: discovered as described in the module docstring.
    config: a ready ``voc.FolderConfig`` instead of the above (for pickling).
    **kwargs: ``data_dir``, ``version``, ``file_format`` of ``tfds.core.DatasetBuilder``.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "COCO folder with contiguous labels and clipped boxes."}

  def __init__(self, source_dir=None, *, splits: Mapping[str, tuple[str, str]] | None = None,
               config: voc.FolderConfig | None = None, **kwargs):
    if config is None:
      if source_dir is None:
        raise ValueError("CocoFolder needs source_dir (the COCO folder) or config")
      root = pathlib.Path(source_dir).expanduser().resolve()
      if not root.is_dir():
        raise FileNotFoundError(f"COCO folder {root} does not exist (or is not a folder)")
      if splits is None:
        split_triples = discover_coco_splits(root)
      else:
        split_triples = tuple(sorted((s, str((root / a).resolve()), str((root / i).resolve()))
                                     for s, (a, i) in splits.items()))
      for _, ann, img in split_triples:
        if not pathlib.Path(ann).is_file():
          raise FileNotFoundError(f"COCO annotation file {ann} not found")
        if not pathlib.Path(img).is_dir():
          raise FileNotFoundError(f"COCO image folder {img} not found")
      config = voc.make_folder_config(root, splits=split_triples,
                                      content=coco_content_key(split_triples))
    self._json_cache: dict[str, dict] = {}
    super().__init__(config=config, **kwargs)

  def _json(self, path: str) -> dict:
    if path not in self._json_cache:
      self._json_cache[path] = load_coco_json(pathlib.Path(path))
    return self._json_cache[path]

  def _info(self) -> tfds.core.DatasetInfo:
    metadata = tfds.core.MetadataDict(format="coco", source_dir=self.builder_config.source_dir)
    label = tfds.features.ClassLabel()  # names restored from the prepared dir
    if not voc.is_prepared(self):
      ids, names = None, None
      for _, ann, _ in self.builder_config.splits:
        split_ids, split_names = coco_categories(self._json(ann), path=pathlib.Path(ann))
        if ids is not None and (split_ids, split_names) != (ids, names):
          raise ValueError(f"{ann}: categories differ from those of the other splits' JSON")
        ids, names = split_ids, split_names
      label = tfds.features.ClassLabel(names=names)
      metadata["category_ids"] = list(ids)
    features = voc.base_features()
    features["objects"] = tfds.features.Sequence({
        "id": np.int64,
        "area": np.float32,
        "bbox": tfds.features.BBoxFeature(),
        "label": label,
        "is_crowd": np.bool_,
    })
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"COCO detection data read from {self.builder_config.source_dir}.",
        features=tfds.features.FeaturesDict(features),
        metadata=metadata,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data is read from source_dir.
    return {s: self._generate_examples(s, pathlib.Path(a), pathlib.Path(i))
            for s, a, i in self.builder_config.splits}

  def _generate_examples(self, split: str, ann_path: pathlib.Path,
                         image_dir: pathlib.Path) -> Iterator[tuple[int, dict]]:
    data = self._json(str(ann_path))
    label_of = {cid: i for i, cid in enumerate(self.info.metadata["category_ids"])}
    images = {}
    for i, image in enumerate(data["images"]):
      _require(image, ("id", "file_name", "height", "width"), where=f"{ann_path} images[{i}]")
      if image["id"] in images:
        raise ValueError(f"{ann_path} images[{i}]: duplicate image id {image['id']}")
      images[image["id"]] = image
    per_image = {image_id: [] for image_id in images}
    for i, ann in enumerate(data["annotations"]):
      where = f"{ann_path} annotations[{i}] (id {ann.get('id')})"
      _require(ann, ("image_id", "category_id", "bbox"), where=where)
      if ann["image_id"] not in images:
        raise ValueError(f"{where}: image_id {ann['image_id']} is not in 'images'")
      if ann["category_id"] not in label_of:
        raise ValueError(f"{where}: category_id {ann['category_id']} is not in 'categories'")
      if not isinstance(ann["bbox"], (list, tuple)) or len(ann["bbox"]) != 4:
        raise ValueError(f"{where}: bbox is {ann['bbox']!r}, expected [x, y, width, height]")
      per_image[ann["image_id"]].append((i, ann))

    log = voc.BoxLog()
    num_yielded = 0
    for image_id, image in images.items():
      image_path = image_dir / image["file_name"]
      try:
        height, width = voc.image_size(image_path, referenced_by=ann_path)
      except voc.UnreadableImageError as e:
        voc.skip_image(e, log=log)
        continue
      json_hw = (image["height"], image["width"])
      if json_hw != (height, width):
        raise ValueError(f"{ann_path}: image {image_id} is {json_hw[1]}x{json_hw[0]} (w x h) in "
                         f"the JSON but {image_path.name} is {width}x{height}")
      objects = {"id": [], "area": [], "bbox": [], "label": [], "is_crowd": []}
      for i, ann in per_image[image_id]:
        where = f"{ann_path} annotations[{i}] (id {ann.get('id')}, image {image['file_name']})"
        x, y, w, h = (_finite(v, what="bbox value", where=where) for v in ann["bbox"])
        box = voc.sanitize_box((x, y, x + w, y + h), height=height, width=width, where=where,
                               log=log)
        if box is None:
          continue
        area = ann.get("area", w * h)
        objects["id"].append(int(ann.get("id", -1)))
        objects["area"].append(_finite(area, what="area", where=where))
        objects["bbox"].append(voc.normalized_bbox(box, height=height, width=width))
        objects["label"].append(label_of[ann["category_id"]])
        objects["is_crowd"].append(bool(ann.get("iscrowd", 0)))
      num_yielded += 1
      yield int(image_id), {
          "image": image_path,
          "image/filename": image["file_name"],
          "image/id": int(image_id),
          "image/height": height,
          "image/width": width,
          "objects": objects,
      }
    voc.check_not_empty(num_yielded, split=split, source=ann_path, log=log)
    voc.record_box_log(self, split, log)

