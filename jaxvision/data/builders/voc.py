"""TFDS builder for a local Pascal VOC style detection folder.

The folder holds ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg`` and
``ImageSets/Main/{train,val,test}.txt`` (one image id per line). Each split file present
becomes a TFDS split of the same name (``trainval`` is ``split="train+val"``).

Features follow TFDS's ``voc`` builder, plus the image id and size:

  image               uint8 [H, W, 3] (JPEG bytes stored as they are on disk)
  image/filename      str, e.g. ``BloodImage_00000.jpg``
  image/id            int64, the position of the id in the sorted list of all annotation files
  image/height, image/width  int64, the size of the decoded image
  objects             Sequence of
    bbox              tfds.features.BBoxFeature: float32 [4] normalized ``(ymin, xmin, ymax, xmax)``
    label             ClassLabel over the class names
    is_difficult, is_truncated  bool (False when the XML omits them)

Pixel coordinates in the XML are box edges (``xmax == width`` reaches the right border), divided
by the image size as TFDS's ``voc`` does. Boxes that stick out of the image are clipped to it;
boxes with zero area (after clipping) are dropped. Both emit a ``DetectionDataWarning`` naming
the file and the box, and are recorded in ``info.metadata["clipped_boxes"/"dropped_boxes"]``
per split, so they never crash preparation and are never trained on.

Every image is decoded in full when the records are prepared (the records keep the file's
bytes, which the input pipeline decodes later): an image whose content does not decode (a
truncated or corrupt JPEG) is skipped with a ``DetectionDataWarning`` naming the file and
recorded in ``info.metadata["skipped_images"]``, rather than stopping the input pipeline
mid-training with a decoder error that names no file. A missing image file is an error.

Prepared records are keyed by the folder's content (see :func:`voc_content_key`): editing an
annotation, a split file or an image in place prepares the folder again, into a new directory.

This module also holds what the local folder builders share (``coco.py`` imports it): the
warning class, the per-folder ``BuilderConfig`` and the box sanitizer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pathlib
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from jaxvision.data.builders import local

VOC_SPLITS = ("train", "val", "test")
# Boxes may overshoot the image border by this many pixels (annotation tools round) and are
# then clipped without a warning; a larger overshoot is clipped with a warning.
CLIP_TOLERANCE_PX = 1.0


class DetectionDataWarning(UserWarning):
  """A box in detection data was clipped to its image, dropped, or truncated to ``max_boxes``."""


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  """Config of a local-folder builder: one config per source folder.

  Attributes:
    source_dir: absolute path of the source folder.
    class_names: explicit class list (label i is ``class_names[i]``), or None to take the
      sorted set of names found in the data (VOC) / the categories of the JSON (COCO).
    splits: ``((split, annotation_file, image_dir), ...)`` with absolute paths (COCO only).
  """

  source_dir: str = ""
  class_names: tuple[str, ...] | None = None
  splits: tuple[tuple[str, str, str], ...] = ()


def make_folder_config(source_dir, *, class_names: Sequence[str] | None = None,
                       splits: tuple[tuple[str, str, str], ...] = (),
                       content: Sequence[str] = ()) -> FolderConfig:
  """Returns a config named ``<folder>_<hash>``: the folder name plus a hash of its absolute path.

  The hash also covers ``class_names``, ``splits`` and ``content`` (lines that identify the
  source files' content, e.g. :func:`voc_content_key`), so two folders, two class lists for one
  folder, or a folder before and after an edit never share prepared records under the same
  TFDS data dir.
  """
  path = pathlib.Path(source_dir).expanduser().resolve()
  if not path.is_dir():
    raise FileNotFoundError(f"detection data folder {path} does not exist (or is not a folder)")
  if class_names is not None:
    class_names = tuple(str(n) for n in class_names)
    if not class_names or len(set(class_names)) != len(class_names):
      raise ValueError(f"class_names must be a non-empty list of distinct names, got {class_names}")
  key = repr((str(path), class_names, splits, tuple(content))).encode()
  digest = hashlib.sha256(key).hexdigest()[:10]
  stem = re.sub(r"[^a-z0-9]+", "_", path.name.lower()).strip("_") or "root"
  return FolderConfig(name=f"{stem}_{digest}", description=f"Local detection data from {path}",
                      source_dir=str(path), class_names=class_names, splits=splits)


def is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
  """True when ``builder``'s records were already written (its dataset_info.json exists)."""
  return (pathlib.Path(builder.data_path) / "dataset_info.json").exists()


class UnreadableImageError(ValueError):
  """An image file whose header or content does not decode (the message names the file)."""


# What PIL raises on a bad file: UnidentifiedImageError (an OSError) for an unknown format,
# OSError for truncated data, SyntaxError for broken PNG chunks, ValueError/EOFError for
# broken headers, DecompressionBombError for absurd sizes.
_UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, PIL.Image.DecompressionBombError)


def image_size(path: pathlib.Path, *, referenced_by: pathlib.Path,
               decode: bool = True) -> tuple[int, int]:
  """Returns ``(height, width)`` of an image file, after decoding it in full (``decode``;
  JPEGs at 1/8 scale, which still reads every byte of the compressed data) or reading only
  its header.

  Raises:
    FileNotFoundError: the file does not exist (the message names ``referenced_by``).
    UnreadableImageError: the file is not a readable image, or (``decode``) its content is
      truncated or corrupt.
  """
  if not path.is_file():
    raise FileNotFoundError(f"{referenced_by}: image file {path} not found")
  try:
    with PIL.Image.open(path) as im:
      width, height = im.size
      if decode:
        im.draft("RGB", (1, 1))  # JPEG: decode at the smallest DCT scale; others: no-op
        im.load()
  except _UNREADABLE as e:
    raise UnreadableImageError(f"{referenced_by}: {path} is not a readable image "
                               f"({type(e).__name__}: {e})") from e
  return height, width


@dataclasses.dataclass
class BoxLog:
  """Per-split records of clipped and dropped boxes and of skipped (unreadable) images
  (saved in the dataset metadata)."""

  clipped: list[str] = dataclasses.field(default_factory=list)
  dropped: list[str] = dataclasses.field(default_factory=list)
  skipped_images: list[str] = dataclasses.field(default_factory=list)


def skip_image(error: UnreadableImageError, *, log: BoxLog) -> None:
  """Emits a ``DetectionDataWarning`` that the image named in ``error`` is skipped, and records
  it in ``log``."""
  msg = f"{error}; image skipped"
  warnings.warn(msg, DetectionDataWarning, stacklevel=3)
  log.skipped_images.append(msg)


def sanitize_box(box_xyxy: Sequence[float], *, height: int, width: int, where: str,
                 log: BoxLog) -> tuple[float, float, float, float] | None:
  """Clips a pixel ``(xmin, ymin, xmax, ymax)`` box to a ``height x width`` image.

  Returns the clipped box, or None when it is empty (zero or negative width/height, before or
  after clipping). Overshoots larger than ``CLIP_TOLERANCE_PX`` and dropped boxes emit a
  ``DetectionDataWarning`` that names ``where`` (file and object) and the box, and go to ``log``.
  """
  x0, y0, x1, y1 = (float(v) for v in box_xyxy)
  cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
  cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
  box = f"(xmin={x0:g}, ymin={y0:g}, xmax={x1:g}, ymax={y1:g})"
  if cx1 <= cx0 or cy1 <= cy0:
    msg = f"{where}: box {box} has zero area inside the {width}x{height} image; dropped"
    warnings.warn(msg, DetectionDataWarning, stacklevel=2)
    log.dropped.append(msg)
    return None
  overshoot = max(-x0, -y0, x1 - width, y1 - height)
  if overshoot > CLIP_TOLERANCE_PX:
    msg = (f"{where}: box {box} extends {overshoot:g} px outside the {width}x{height} image; "
           f"clipped to (xmin={cx0:g}, ymin={cy0:g}, xmax={cx1:g}, ymax={cy1:g})")
    warnings.warn(msg, DetectionDataWarning, stacklevel=2)
    log.clipped.append(msg)
  return cx0, cy0, cx1, cy1


def normalized_bbox(box_xyxy: Sequence[float], *, height: int, width: int) -> tfds.features.BBox:
  """Pixel ``(xmin, ymin, xmax, ymax)`` (inside the image) -> TFDS normalized yxyx ``BBox``."""
  x0, y0, x1, y1 = box_xyxy
  return tfds.features.BBox(ymin=min(y0 / height, 1.0), xmin=min(x0 / width, 1.0),
                            ymax=min(y1 / height, 1.0), xmax=min(x1 / width, 1.0))


def check_not_empty(num_yielded: int, *, split: str, source, log: BoxLog) -> None:
  """Raises a ValueError naming ``source`` when a split yielded no image (TFDS cannot write an
  empty split), with the first skipped image if any."""
  if num_yielded == 0:
    why = (f"all {len(log.skipped_images)} of its images are unreadable, e.g. "
           f"{log.skipped_images[0]}" if log.skipped_images else "it lists no image")
    raise ValueError(f"{source}: split {split!r} has no readable image: {why}")


def record_box_log(builder: tfds.core.DatasetBuilder, split: str, log: BoxLog) -> None:
  """Stores ``log`` in ``builder.info.metadata`` (written to metadata.json after preparing)."""
  metadata = builder.info.metadata
  metadata.setdefault("clipped_boxes", {})[split] = log.clipped
  metadata.setdefault("dropped_boxes", {})[split] = log.dropped
  metadata.setdefault("skipped_images", {})[split] = log.skipped_images


def base_features() -> dict:
  """Image features shared by the VOC and COCO folder builders (TFDS names)."""
  return {
      "image": tfds.features.Image(encoding_format="jpeg"),
      "image/filename": tfds.features.Text(),
      "image/id": np.int64,
      "image/height": np.int64,
      "image/width": np.int64,
  }


# ---------------------------------------------------------------------------------------------
# Pascal VOC XML


def _text(elem: ET.Element, tag: str, *, where: str, required: bool = True) -> str | None:
  child = elem.find(tag)
  if child is None or child.text is None or not child.text.strip():
    if required:
      raise ValueError(f"{where}: missing <{tag}>")
    return None
  return child.text.strip()


def _number(elem: ET.Element, tag: str, *, where: str) -> float:
  text = _text(elem, tag, where=where)
  try:
    value = float(text)
  except ValueError:
    raise ValueError(f"{where}: <{tag}> is {text!r}, expected a number") from None
  if not math.isfinite(value):
    raise ValueError(f"{where}: <{tag}> is {text!r}, expected a finite number")
  return value


def _flag(elem: ET.Element, tag: str, *, where: str) -> bool:
  text = _text(elem, tag, where=where, required=False)
  if text is None:
    return False
  if text not in ("0", "1"):
    raise ValueError(f"{where}: <{tag}> is {text!r}, expected 0 or 1")
  return text == "1"


def parse_voc_xml(xml_path: pathlib.Path) -> tuple[ET.Element, list[dict]]:
  """Parses one VOC annotation file into its root and a list of objects.

  Each object is ``{"name": str, "box": (xmin, ymin, xmax, ymax) pixels, "is_truncated": bool,
  "is_difficult": bool, "where": "<file> object #i '<name>'"}``; boxes are not yet clipped.

  Raises:
    ValueError: the XML does not parse, or an object lacks ``<name>`` / ``<bndbox>`` / a
      coordinate, or a coordinate is not a finite number. The message names the file.
  """
  try:
    root = ET.parse(xml_path).getroot()
  except ET.ParseError as e:
    raise ValueError(f"{xml_path}: malformed XML ({e})") from e
  if root.tag != "annotation":
    raise ValueError(f"{xml_path}: root element is <{root.tag}>, expected <annotation>")
  objects = []
  for i, obj in enumerate(root.findall("object")):
    where = f"{xml_path} object #{i}"
    name = _text(obj, "name", where=where)
    where = f"{where} {name!r}"
    bndbox = obj.find("bndbox")
    if bndbox is None:
      raise ValueError(f"{where}: missing <bndbox>")
    box = tuple(_number(bndbox, t, where=where) for t in ("xmin", "ymin", "xmax", "ymax"))
    objects.append({
        "name": name, "box": box, "where": where,
        "is_truncated": _flag(obj, "truncated", where=where),
        "is_difficult": _flag(obj, "difficult", where=where),
    })
  return root, objects


def voc_class_names(annotations_dir: pathlib.Path) -> tuple[str, ...]:
  """The sorted set of object names over all ``annotations_dir/*.xml``."""
  names = set()
  for xml_path in sorted(annotations_dir.glob("*.xml")):
    names.update(obj["name"] for obj in parse_voc_xml(xml_path)[1])
  if not names:
    raise ValueError(f"{annotations_dir}: no <object> found in any annotation file")
  return tuple(sorted(names))


def voc_content_key(root: pathlib.Path) -> list[str]:
  """Lines identifying the content of a VOC folder: every ``Annotations/*.xml`` and
  ``ImageSets/Main/*.txt`` by a hash of its bytes (when up to 1 MiB) and every file in
  ``JPEGImages/`` by size and modification time (``local.file_stamp``)."""
  key = []
  for sub, suffixes, hash_up_to in (("Annotations", (".xml",), local.HASH_UP_TO_BYTES),
                                    ("ImageSets/Main", (".txt",), local.HASH_UP_TO_BYTES),
                                    ("JPEGImages", None, 0)):
    key += [f"{sub}/{line}" for line in local.folder_stamps(root / sub, suffixes=suffixes,
                                                            hash_up_to=hash_up_to)]
  return key


def check_voc_folder(root: pathlib.Path) -> None:
  """Raises FileNotFoundError unless ``root`` has Annotations/, JPEGImages/ and ImageSets/Main/."""
  for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
    if not (root / sub).is_dir():
      raise FileNotFoundError(
          f"{root} is not a Pascal VOC folder: expected the subfolder {sub}/ "
          "(Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/{train,val,test}.txt)")


class VocFolder(local.LocalBuilder):
  """Pascal VOC XML folder -> TFDS records, one builder config per folder.

  Usage::

    builder = VocFolder("/data/BCCD", data_dir=paths.tfds_dir())
    builder.download_and_prepare()       # reads the folder; no download
    ds = builder.as_dataset(split="train")

  Args:
    source_dir: the VOC folder (Annotations/, JPEGImages/, ImageSets/Main/).
    class_names: optional explicit class list; default: sorted set of names in the data. An
      object whose name is not in the list raises ValueError when preparing.
    config: a ready ``FolderConfig`` instead of ``source_dir``/``class_names`` (for pickling).
    **kwargs: ``data_dir``, ``version``, ``file_format`` of ``tfds.core.DatasetBuilder``.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Pascal VOC folder with image id/size and clipped boxes."}

  def __init__(self, source_dir=None, *, class_names: Sequence[str] | None = None,
               config: FolderConfig | None = None, **kwargs):
    if config is None:
      if source_dir is None:
        raise ValueError("VocFolder needs source_dir (the VOC folder) or config")
      root, content = pathlib.Path(source_dir).expanduser().resolve(), ()
      if root.is_dir():  # else make_folder_config says it does not exist
        check_voc_folder(root)
        content = voc_content_key(root)
      config = make_folder_config(root, class_names=class_names, content=content)
    check_voc_folder(pathlib.Path(config.source_dir))
    super().__init__(config=config, **kwargs)

  @property
  def _root(self) -> pathlib.Path:
    return pathlib.Path(self.builder_config.source_dir)

  def _info(self) -> tfds.core.DatasetInfo:
    names = self.builder_config.class_names
    if names is None and not is_prepared(self):  # else restored from the prepared dir
      names = voc_class_names(self._root / "Annotations")
    label = tfds.features.ClassLabel(names=names) if names else tfds.features.ClassLabel()
    features = base_features()
    features["objects"] = tfds.features.Sequence({
        "bbox": tfds.features.BBoxFeature(),
        "label": label,
        "is_difficult": np.bool_,
        "is_truncated": np.bool_,
    })
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"Pascal VOC detection data read from {self._root}.",
        features=tfds.features.FeaturesDict(features),
        metadata=tfds.core.MetadataDict(format="voc", source_dir=str(self._root)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data is read from source_dir.
    main = self._root / "ImageSets" / "Main"
    split_files = {s: main / f"{s}.txt" for s in VOC_SPLITS if (main / f"{s}.txt").is_file()}
    if not split_files:
      raise FileNotFoundError(
          f"{main}: expected split files {', '.join(s + '.txt' for s in VOC_SPLITS)} "
          f"(one image id per line); found {sorted(p.name for p in main.iterdir())}")
    all_ids = sorted(p.stem for p in (self._root / "Annotations").glob("*.xml"))
    id_index = {stem: i for i, stem in enumerate(all_ids)}
    return {s: self._generate_examples(s, f, id_index) for s, f in split_files.items()}

  def _generate_examples(self, split: str, split_file: pathlib.Path,
                         id_index: dict[str, int]) -> Iterator[tuple[str, dict]]:
    names = set(self.info.features["objects"]["label"].names)
    log = BoxLog()
    ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    num_yielded = 0
    for stem in ids:
      xml_path = self._root / "Annotations" / f"{stem}.xml"
      if stem not in id_index:
        raise FileNotFoundError(f"{split_file}: image id {stem!r} has no annotation {xml_path}")
      root, objects = parse_voc_xml(xml_path)
      image_path = self._image_path(stem, root, xml_path)
      try:
        height, width = image_size(image_path, referenced_by=xml_path)
      except UnreadableImageError as e:
        skip_image(e, log=log)
        continue
      size = root.find("size")
      if size is not None and size.find("width") is not None:
        xml_hw = (int(_number(size, "height", where=str(xml_path))),
                  int(_number(size, "width", where=str(xml_path))))
        if all(xml_hw) and xml_hw != (height, width):  # 0x0 is a common "unknown" export
          raise ValueError(f"{xml_path}: <size> says {xml_hw[1]}x{xml_hw[0]} (w x h) but "
                           f"{image_path.name} is {width}x{height}")
      kept = []
      for obj in objects:
        if obj["name"] not in names:
          raise ValueError(f"{obj['where']}: class {obj['name']!r} is not in class_names "
                           f"{sorted(names)}")
        box = sanitize_box(obj["box"], height=height, width=width, where=obj["where"], log=log)
        if box is not None:
          kept.append((obj, box))
      num_yielded += 1
      yield stem, {
          "image": image_path,
          "image/filename": image_path.name,
          "image/id": id_index[stem],
          "image/height": height,
          "image/width": width,
          "objects": {
              "bbox": [normalized_bbox(b, height=height, width=width) for _, b in kept],
              "label": [o["name"] for o, _ in kept],
              "is_difficult": [o["is_difficult"] for o, _ in kept],
              "is_truncated": [o["is_truncated"] for o, _ in kept],
          },
      }
    check_not_empty(num_yielded, split=split, source=split_file, log=log)
    record_box_log(self, split, log)

  def _image_path(self, stem: str, root: ET.Element, xml_path: pathlib.Path) -> pathlib.Path:
    """``JPEGImages/<id>.jpg``, else the XML's ``<filename>`` in JPEGImages/."""
    images = self._root / "JPEGImages"
    path = images / f"{stem}.jpg"
    if path.is_file():
      return path
    filename = _text(root, "filename", where=str(xml_path), required=False)
    if filename and (images / filename).is_file():
      return images / filename
    raise FileNotFoundError(f"{xml_path}: image file not found: expected {path}"
                            + (f" or {images / filename}" if filename else ""))
