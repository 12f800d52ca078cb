"""COCO-format input for the detection evaluator: loading, validation and array conversion.

Host-side NumPy only. Two record formats are involved, both as in the COCO API:

* Ground truth: a dict with ``images`` (``{"id", ...}``), ``categories`` (``{"id", "name"}``) and
  ``annotations`` (``{"id", "image_id", "category_id", "bbox": [x, y, w, h], "area",
  "iscrowd", ...}``), i.e. the contents of an ``instances_*.json`` file.
* Detections: a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``, the
  results format that ``pycocotools.coco.COCO.loadRes`` reads.

COCO boxes are ``[x, y, width, height]`` in pixels with no ``+1``: a box covers the continuous
region ``[x, x + width] x [y, y + height]``. The rest of jaxvision uses ``xyxy`` pixels;
:func:`detections_from_arrays` and :func:`ground_truth_from_arrays` convert padded per-image
``xyxy`` arrays (what our detectors and data pipelines produce) into these formats.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True)
class GroundTruthArrays:
  """Validated ground truth as arrays (G annotations, I images, K categories).

  Attributes:
    image_ids: [I] image ids in ascending order (the evaluation order of images).
    category_ids: [K] category ids in ascending order.
    category_names: [K] names (``str(id)`` where a category has no ``name``).
    image_index: [G] int, position of each annotation's image in ``image_ids``.
    category_index: [G] int, position of each annotation's category in ``category_ids``.
    boxes: [G, 4] float64 ``[x, y, w, h]`` pixels.
    area: [G] float64, the annotation's ``area`` field (used for the area ranges).
    iscrowd: [G] bool.
    ignore: [G] bool, the annotation's optional ``ignore`` field (False where absent).
  """
  image_ids: list
  category_ids: list
  category_names: list[str]
  image_index: np.ndarray
  category_index: np.ndarray
  boxes: np.ndarray
  area: np.ndarray
  iscrowd: np.ndarray
  ignore: np.ndarray


@dataclasses.dataclass(frozen=True)
class DetectionArrays:
  """Validated detections as arrays (N detections), in input order.

  Attributes:
    image_index: [N] int, position of each detection's image in ``GroundTruthArrays.image_ids``.
    category_index: [N] int, position in ``GroundTruthArrays.category_ids``.
    boxes: [N, 4] float64 ``[x, y, w, h]`` pixels.
    scores: [N] float64.
  """
  image_index: np.ndarray
  category_index: np.ndarray
  boxes: np.ndarray
  scores: np.ndarray


def _load_json(path: PathLike, what: str) -> Any:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} JSON file {path!r} not found")
  with open(path) as f:
    return json.load(f)


def _describe(record: Mapping, index: int, where: str) -> str:
  ident = f" (id={record['id']!r})" if isinstance(record, Mapping) and "id" in record else ""
  return f"{where}[{index}]{ident}"


def _require_keys(record: Any, keys: Sequence[str], index: int, where: str):
  if not isinstance(record, Mapping):
    raise ValueError(f"{where}[{index}] must be a dict with keys {list(keys)}; "
                     f"got {type(record).__name__}: {record!r}")
  missing = [k for k in keys if k not in record]
  if missing:
    raise ValueError(f"{_describe(record, index, where)} is missing key(s) {missing}; "
                     f"expected keys {list(keys)}, found {sorted(record)}")


def _hashable_id(value: Any, what: str) -> Any:
  if isinstance(value, (bool, float)) or not isinstance(value, (int, str, np.integer)):
    raise ValueError(f"{what} must be an int (or str) id; got {type(value).__name__} {value!r}")
  return int(value) if isinstance(value, np.integer) else value


def _boxes_column(records: Sequence[Mapping], where: str) -> np.ndarray:
  """[N, 4] float64 from each record's ``bbox``; raises on malformed boxes."""
  expect = "'bbox' must be [x, y, width, height] of finite numbers with width, height >= 0"
  boxes = np.zeros((len(records), 4), np.float64)
  for i, r in enumerate(records):
    bbox = r["bbox"]
    try:
      row = np.asarray(bbox, np.float64)
    except (TypeError, ValueError):
      row = None
    if row is None or row.shape != (4,):
      raise ValueError(f"{_describe(r, i, where)}: {expect}; got {bbox!r}")
    boxes[i] = row
  bad = ~np.all(np.isfinite(boxes), axis=1) | (boxes[:, 2] < 0) | (boxes[:, 3] < 0)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(f"{_describe(records[i], i, where)}: {expect}; got {records[i]['bbox']!r}")
  return boxes


def _number_column(records: Sequence[Mapping], key: str, where: str,
                   nonnegative: bool) -> np.ndarray:
  values = np.zeros(len(records), np.float64)
  expect = f"'{key}' must be a finite number" + (" >= 0" if nonnegative else "")
  for i, r in enumerate(records):
    v = r[key]
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
      raise ValueError(f"{_describe(r, i, where)}: {expect}; got {type(v).__name__} {v!r}")
    values[i] = v
  bad = ~np.isfinite(values) | ((values < 0) if nonnegative else False)
  if np.any(bad):
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(f"{_describe(records[i], i, where)}: {expect}; got {records[i][key]!r}")
  return values


def _flag_column(records: Sequence[Mapping], key: str, where: str) -> np.ndarray:
  """Optional 0/1 field (missing means 0)."""
  out = np.zeros(len(records), bool)
  for i, r in enumerate(records):
    v = r.get(key, 0)
    if v not in (0, 1):  # also admits False/True
      raise ValueError(f"{_describe(r, i, where)}: '{key}' must be 0 or 1; got {v!r}")
    out[i] = bool(v)
  return out


def _index_column(records: Sequence[Mapping], key: str, lookup: Mapping, where: str,
                  known: str) -> np.ndarray:
  out = np.zeros(len(records), np.int64)
  for i, r in enumerate(records):
    v = r[key]
    pos = lookup.get(v) if isinstance(v, (int, str, np.integer)) and not isinstance(v, bool) \
        else None
    if pos is None:
      raise ValueError(f"{_describe(r, i, where)}: {key}={v!r} is not one of the ground "
                       f"truth's {known} ({_preview(list(lookup))})")
    out[i] = pos
  return out


def _preview(ids: list) -> str:
  shown = ", ".join(repr(x) for x in ids[:8])
  return f"{len(ids)} ids: {shown}{', ...' if len(ids) > 8 else ''}"


def _unique_ids(records: Sequence[Any], where: str) -> list:
  ids = []
  for i, r in enumerate(records):
    _require_keys(r, ["id"], i, where)
    ids.append(_hashable_id(r["id"], f"{where}[{i}]['id']"))
  seen = set()
  for i, x in enumerate(ids):
    if x in seen:
      raise ValueError(f"{where}[{i}] has duplicate id {x!r}; ids must be unique")
    seen.add(x)
  return ids


def load_ground_truth(ground_truth: Mapping | PathLike) -> GroundTruthArrays:
  """Validates a COCO-format ground-truth dict (or JSON path) and returns it as arrays.

  Required per annotation: ``image_id`` (one of ``images``' ids), ``category_id`` (one of
  ``categories``' ids), ``bbox`` (finite ``[x, y, w, h]``, ``w, h >= 0``) and ``area`` (finite,
  ``>= 0``; COCO's mask area, which the area ranges use). Optional: ``iscrowd`` and ``ignore``
  (0/1, default 0) and ``id`` (unique where present).

  Raises:
    FileNotFoundError: ``ground_truth`` is a path that does not exist.
    ValueError: malformed input; the message names the offending record and what was expected.
  """
  if isinstance(ground_truth, (str, os.PathLike)):
    ground_truth = _load_json(ground_truth, "ground-truth")
  if not isinstance(ground_truth, Mapping):
    raise ValueError("ground_truth must be a COCO-format dict with 'images', 'annotations' and "
                     f"'categories', or a path to such a JSON file; got {type(ground_truth)}")
  for key in ("images", "annotations", "categories"):
    if key not in ground_truth:
      raise ValueError(f"ground_truth is missing the {key!r} list; expected a COCO-format dict "
                       f"with 'images', 'annotations' and 'categories', found keys "
                       f"{sorted(ground_truth)}")
    if not isinstance(ground_truth[key], Sequence) or isinstance(ground_truth[key], str):
      raise ValueError(f"ground_truth[{key!r}] must be a list; got {type(ground_truth[key])}")

  image_ids = _unique_ids(ground_truth["images"], "ground_truth['images']")
  categories = ground_truth["categories"]
  cat_ids = _unique_ids(categories, "ground_truth['categories']")
  try:
    image_ids = sorted(image_ids)
    order = sorted(range(len(cat_ids)), key=lambda i: cat_ids[i])
  except TypeError as e:
    raise ValueError(f"image and category ids must be mutually comparable: {e}") from None
  cat_names = [str(categories[i].get("name", cat_ids[i])) for i in order]
  cat_ids = [cat_ids[i] for i in order]

  where = "ground_truth['annotations']"
  anns = ground_truth["annotations"]
  for i, a in enumerate(anns):
    _require_keys(a, ["image_id", "category_id", "bbox", "area"], i, where)
  seen = {}
  for i, a in enumerate(anns):
    if "id" in a:
      ann_id = _hashable_id(a["id"], f"{where}[{i}]['id']")
      if ann_id in seen:
        raise ValueError(f"{where}[{i}] has id {ann_id!r}, already used by {where}"
                         f"[{seen[ann_id]}]; annotation ids must be unique")
      seen[ann_id] = i
  return GroundTruthArrays(
      image_ids=image_ids,
      category_ids=cat_ids,
      category_names=cat_names,
      image_index=_index_column(anns, "image_id", {x: i for i, x in enumerate(image_ids)},
                                where, "image ids"),
      category_index=_index_column(anns, "category_id", {x: i for i, x in enumerate(cat_ids)},
                                   where, "category ids"),
      boxes=_boxes_column(anns, where),
      area=_number_column(anns, "area", where, nonnegative=True),
      iscrowd=_flag_column(anns, "iscrowd", where),
      ignore=_flag_column(anns, "ignore", where),
  )


def load_detections(detections: Sequence[Mapping] | PathLike,
                    gt: GroundTruthArrays) -> DetectionArrays:
  """Validates COCO results-format detections (or a JSON path) against ``gt``.

  Each detection needs ``image_id`` and ``category_id`` present in the ground truth (an unknown
  id raises, where ``loadRes`` asserts and ``COCOeval`` silently drops unknown categories),
  ``bbox`` (finite ``[x, y, w, h]``, ``w, h >= 0``) and a finite ``score``.

  Raises:
    FileNotFoundError: ``detections`` is a path that does not exist.
    ValueError: malformed input; the message names the offending detection's index.
  """
  if isinstance(detections, (str, os.PathLike)):
    detections = _load_json(detections, "detections")
  if isinstance(detections, Mapping) or not isinstance(detections, Sequence):
    raise ValueError("detections must be a list of {'image_id', 'category_id', 'bbox', 'score'} "
                     "dicts (see detections_from_arrays for padded arrays) or a path to such a "
                     f"JSON file; got {type(detections).__name__}")
  where = "detections"
  for i, d in enumerate(detections):
    _require_keys(d, ["image_id", "category_id", "bbox", "score"], i, where)
  return DetectionArrays(
      image_index=_index_column(detections, "image_id",
                                {x: i for i, x in enumerate(gt.image_ids)}, where, "image ids"),
      category_index=_index_column(detections, "category_id",
                                   {x: i for i, x in enumerate(gt.category_ids)}, where,
                                   "category ids"),
      boxes=_boxes_column(detections, where),
      scores=_number_column(detections, "score", where, nonnegative=False),
  )


def _padded_arrays(image_ids, boxes_xyxy, num_valid, **per_box) -> tuple:
  """Checks shapes of padded per-image arrays; returns (ids, boxes, valid_mask, per_box)."""
  boxes = np.asarray(boxes_xyxy, np.float64)
  if boxes.ndim != 3 or boxes.shape[-1] != 4:
    raise ValueError(f"boxes_xyxy must have shape [B, N, 4] (xyxy pixels); got {boxes.shape}")
  b, n, _ = boxes.shape
  ids = np.asarray(image_ids)
  if ids.shape != (b,):
    raise ValueError(f"image_ids must have shape [B]=[{b}]; got {ids.shape}")
  out = {}
  for name, value in per_box.items():
    if value is None:
      continue
    value = np.asarray(value)
    if value.shape != (b, n):
      raise ValueError(f"{name} must have shape [B, N]=[{b}, {n}]; got {value.shape}")
    out[name] = value
  if num_valid is None:
    valid = np.ones((b, n), bool)
  else:
    num_valid = np.asarray(num_valid)
    if num_valid.shape != (b,) or np.any((num_valid < 0) | (num_valid > n)):
      raise ValueError(f"num_valid must have shape [B]=[{b}] with values in [0, {n}]; got "
                       f"{num_valid!r}")
    valid = np.arange(n)[None, :] < num_valid[:, None]
  bad = valid & (~np.all(np.isfinite(boxes), -1) | (boxes[..., 2] < boxes[..., 0])
                 | (boxes[..., 3] < boxes[..., 1]))
  if bad.any():
    i, j = np.argwhere(bad)[0]
    raise ValueError(f"boxes_xyxy[{i}, {j}] = {boxes[i, j].tolist()} is not a valid xyxy box "
                     "(expected finite x1 <= x2, y1 <= y2)")
  return ids, boxes, valid, out


def _xyxy_to_xywh_list(box: np.ndarray) -> list[float]:
  x1, y1, x2, y2 = (float(v) for v in box)
  return [x1, y1, x2 - x1, y2 - y1]


def _category_lookup(category_ids: Sequence | None):
  if category_ids is None:
    return lambda label: int(label)
  table = list(category_ids)

  def lookup(label):
    if not 0 <= label < len(table):
      raise ValueError(f"label {int(label)} is outside category_ids (length {len(table)})")
    return table[int(label)]
  return lookup


def detections_from_arrays(image_ids, boxes_xyxy, scores, labels, num_valid=None, *,
                           category_ids: Sequence | None = None) -> list[dict]:
  """Converts padded per-image detector outputs into COCO results-format detections.

  Args:
    image_ids: [B] int, the COCO image id of each row.
    boxes_xyxy: [B, N, 4] float, ``(x1, y1, x2, y2)`` in pixels of the original image.
    scores: [B, N] float confidences.
    labels: [B, N] int; the COCO category id, or, when ``category_ids`` is given, an index into
      it (for detectors with contiguous class indices ``0..C-1``).
    num_valid: optional [B] int, the number of leading valid entries per row (padded NMS output);
      ``None`` means all ``N`` are valid.
    category_ids: optional sequence mapping label index -> COCO category id.

  Returns:
    A list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` dicts with plain
    Python numbers (JSON-serializable, accepted by ``coco_evaluate`` and ``COCO.loadRes``).

  Raises:
    ValueError: on shape mismatch, a non-finite or inverted valid box, or an unknown label.
  """
  ids, boxes, valid, extra = _padded_arrays(image_ids, boxes_xyxy, num_valid,
                                            scores=scores, labels=labels)
  scores, labels = extra["scores"].astype(np.float64), extra["labels"]
  if not np.all(np.isfinite(scores[valid])):
    raise ValueError("scores must be finite for valid detections")
  to_cat = _category_lookup(category_ids)
  out = []
  for i, j in zip(*np.nonzero(valid)):
    out.append({"image_id": ids[i].item(), "category_id": to_cat(labels[i, j]),
                "bbox": _xyxy_to_xywh_list(boxes[i, j]), "score": float(scores[i, j])})
  return out


def ground_truth_from_arrays(image_ids, boxes_xyxy, labels, num_valid=None, *,
                             categories: Sequence[str] | Sequence[Mapping] | None = None,
                             iscrowd=None, areas=None, image_sizes=None) -> dict:
  """Builds a COCO-format ground-truth dict from padded per-image arrays.

  Args:
    image_ids: [B] int image ids (every row becomes an image, also rows with no boxes).
    boxes_xyxy: [B, N, 4] float ``(x1, y1, x2, y2)`` pixels.
    labels: [B, N] int category ids (see ``categories``).
    num_valid: optional [B] int count of leading valid boxes per row; ``None``: all valid.
    categories: a sequence of names (category id ``i`` is ``names[i]``, so ``labels`` are
      indices), or of ``{"id", "name"}`` dicts, or ``None`` (the distinct labels, named by id).
      Give the full category list: a category absent here cannot receive detections.
    iscrowd: optional [B, N] 0/1 crowd flags (default 0).
    areas: optional [B, N] object areas (COCO uses the mask area); default ``w * h`` of the box.
    image_sizes: optional [B, 2] ``(height, width)`` stored on the image records.

  Returns:
    ``{"images", "annotations", "categories"}`` with annotation ids ``1..G`` (COCO ids start at
    1; ``pycocotools`` mishandles an annotation id of 0).
  """
  ids, boxes, valid, extra = _padded_arrays(image_ids, boxes_xyxy, num_valid, labels=labels,
                                            iscrowd=iscrowd, areas=areas)
  labels = extra["labels"]
  if categories is None:
    cats = [{"id": int(c), "name": str(int(c))} for c in np.unique(labels[valid])]
  else:
    cats = [dict(c) if isinstance(c, Mapping) else {"id": i, "name": str(c)}
            for i, c in enumerate(categories)]
  images = [{"id": ids[i].item()} for i in range(len(ids))]
  if image_sizes is not None:
    sizes = np.asarray(image_sizes)
    if sizes.shape != (len(ids), 2):
      raise ValueError(f"image_sizes must have shape [B, 2] (height, width); got {sizes.shape}")
    for img, (h, w) in zip(images, sizes.tolist()):
      img.update(height=h, width=w)
  anns = []
  for i, j in zip(*np.nonzero(valid)):
    bbox = _xyxy_to_xywh_list(boxes[i, j])
    area = float(extra["areas"][i, j]) if "areas" in extra else bbox[2] * bbox[3]
    if not (math.isfinite(area) and area >= 0):
      raise ValueError(f"areas[{i}, {j}] must be finite and >= 0; got {area}")
    anns.append({"id": len(anns) + 1, "image_id": ids[i].item(),
                 "category_id": labels[i, j].item(), "bbox": bbox, "area": area,
                 "iscrowd": int(extra["iscrowd"][i, j]) if "iscrowd" in extra else 0})
  return {"images": images, "annotations": anns, "categories": cats}
