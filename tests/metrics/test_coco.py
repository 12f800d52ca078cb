"""coco_evaluate against pycocotools' COCOeval and an independent VOC AP reference."""

import contextlib
import copy
import io
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jaxvision.metrics import coco_evaluate
from jaxvision.metrics.coco import detections_from_arrays, ground_truth_from_arrays

STAT_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
             "ARl"]
ATOL = 1e-4


# ----------------------------------------------------------------------------- helpers


def _tiny_coco(tiny_coco_dir):
  with open(tiny_coco_dir / "instances_train2017_small.json") as f:
    return json.load(f)


def _pycocotools(gt, dets, max_dets=None):
  """COCOeval run on deep copies (pycocotools mutates its inputs), its prints silenced."""
  with contextlib.redirect_stdout(io.StringIO()):
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    coco.createIndex()
    evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
    if max_dets is not None:
      evaluator.params.maxDets = list(max_dets)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return evaluator


def _pycocotools_mean(s):
  return float(np.mean(s[s > -1])) if np.any(s > -1) else -1.0


def _assert_matches_pycocotools(ours, evaluator, keys=STAT_KEYS):
  np.testing.assert_allclose(ours["stats"], evaluator.stats, rtol=0, atol=ATOL)
  assert [ours[k] for k in keys] == ours["stats"]
  precision = evaluator.eval["precision"]  # [T, R, K, A, M]
  for k, cat_id in enumerate(evaluator.params.catIds):
    got = ours["per_class"][cat_id]
    want_ap = _pycocotools_mean(precision[:, :, k, 0, -1])
    want_ap50 = _pycocotools_mean(precision[0, :, k, 0, -1])
    assert got["AP"] == pytest.approx(want_ap, abs=ATOL), cat_id
    assert got["AP50"] == pytest.approx(want_ap50, abs=ATOL), cat_id


def _jittered_detections(gt, seed, *, drop=0.2, duplicate=0.3, wrong_class=0.1,
                         random_per_image=6, jitter=0.08):
  """Detections from ground truth: jittered, some dropped, some duplicated, some relabelled,
  plus random boxes; scores rounded to 0.01 so that ties (and sort stability) matter."""
  rng = np.random.default_rng(seed)
  cat_ids = [c["id"] for c in gt["categories"]]
  used = sorted({a["category_id"] for a in gt["annotations"]})
  dets = []

  def add(image_id, category_id, bbox):
    dets.append({"image_id": image_id, "category_id": int(category_id),
                 "bbox": [float(v) for v in bbox], "score": float(np.round(rng.uniform(), 2))})

  for a in gt["annotations"]:
    if rng.uniform() < drop:
      continue
    copies = 1 + (rng.integers(1, 4) if rng.uniform() < duplicate else 0)
    for _ in range(copies):
      x, y, w, h = a["bbox"]
      dx, dy, dw, dh = rng.normal(0.0, jitter, 4) * [w, h, w, h]
      cat = a["category_id"] if rng.uniform() > wrong_class else rng.choice(used)
      add(a["image_id"], cat, [x + dx, y + dy, max(w + dw, 0.0), max(h + dh, 0.0)])
  for img in gt["images"]:
    width, height = img.get("width", 640), img.get("height", 480)
    for _ in range(random_per_image):
      w, h = rng.uniform(1, width / 2), rng.uniform(1, height / 2)
      add(img["id"], rng.choice(cat_ids if rng.uniform() < 0.3 else used),
          [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h])
  order = rng.permutation(len(dets))
  return [dets[i] for i in order]


def _bccd_ground_truth(bccd_dir):
  """Pascal VOC XML of BCCD's test split as a COCO dict (zero-area boxes skipped)."""
  names = ["RBC", "WBC", "Platelets"]
  images, anns = [], []
  stems = (bccd_dir / "ImageSets" / "Main" / "test.txt").read_text().split()
  for image_id, stem in enumerate(stems, start=1):
    root = ET.parse(bccd_dir / "Annotations" / f"{stem}.xml").getroot()
    size = root.find("size")
    images.append({"id": image_id, "file_name": f"{stem}.jpg",
                   "width": int(size.findtext("width")), "height": int(size.findtext("height"))})
    for obj in root.iter("object"):
      box = obj.find("bndbox")
      x1, y1, x2, y2 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
      if x2 <= x1 or y2 <= y1:
        continue
      anns.append({"id": len(anns) + 1, "image_id": image_id,
                   "category_id": names.index(obj.findtext("name").strip()) + 1,
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                   "iscrowd": 0})
  cats = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
  return {"images": images, "annotations": anns, "categories": cats}


def _voc_ap50_reference(gt, dets):
  """Straightforward float64 loops: VOC2010+ all-point AP at IoU >= 0.5, crowd = difficult."""
  def iou(a, b):
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
      return 0.0
    return iw * ih / (a[2] * a[3] + b[2] * b[3] - iw * ih)

  per_class = {}
  for cat in sorted(c["id"] for c in gt["categories"]):
    boxes = [a for a in gt["annotations"] if a["category_id"] == cat]
    num_pos = sum(1 for a in boxes if not a.get("iscrowd", 0))
    if num_pos == 0:
      per_class[cat] = -1.0
      continue
    mine = [(i, d) for i, d in enumerate(dets) if d["category_id"] == cat]
    mine.sort(key=lambda p: (-p[1]["score"], p[1]["image_id"], p[0]))
    detected, tp, fp = set(), [], []
    for _, d in mine:
      cands = [a for a in boxes if a["image_id"] == d["image_id"]]
      overlaps = [iou(d["bbox"], a["bbox"]) for a in cands]
      if overlaps and max(overlaps) >= 0.5:
        best = cands[int(np.argmax(overlaps))]
        if best.get("iscrowd", 0):
          continue
        is_tp = best["id"] not in detected
        detected.add(best["id"])
      else:
        is_tp = False
      tp.append(float(is_tp))
      fp.append(float(not is_tp))
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    mrec = [0.0] + list(ctp / num_pos) + [1.0]
    mpre = [0.0] + list(ctp / np.maximum(ctp + cfp, 1e-300)) + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
      mpre[i] = max(mpre[i], mpre[i + 1])
    per_class[cat] = sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1)
                         if mrec[i + 1] != mrec[i])
  valid = [v for v in per_class.values() if v > -1]
  return per_class, (float(np.mean(valid)) if valid else -1.0)


# ----------------------------------------------------------------------------- pycocotools parity


@pytest.mark.parametrize("seed", range(5))
def test_matches_pycocotools_on_tiny_coco(tiny_coco_dir, seed):
  gt = _tiny_coco(tiny_coco_dir)
  dets = _jittered_detections(gt, seed)
  _assert_matches_pycocotools(coco_evaluate(gt, dets), _pycocotools(gt, dets))


def test_matches_pycocotools_with_crowd_annotations(tiny_coco_dir):
  gt = _tiny_coco(tiny_coco_dir)
  crowd_ids = {a["id"] for a in gt["annotations"][::5]}
  for a in gt["annotations"]:
    if a["id"] in crowd_ids:
      a["iscrowd"] = 1
  dets = _jittered_detections(gt, 11, duplicate=0.8)
  rng = np.random.default_rng(0)
  for a in gt["annotations"]:  # several detections inside each crowd region
    if a["id"] in crowd_ids:
      x, y, w, h = a["bbox"]
      for _ in range(3):
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                     "bbox": [x + rng.uniform(0, w / 4), y + rng.uniform(0, h / 4), w / 2, h / 2],
                     "score": float(rng.uniform())})
  evaluator = _pycocotools(gt, dets)
  _assert_matches_pycocotools(coco_evaluate(gt, dets), evaluator)
  # The crowd flags change the result, so this case does exercise them.
  assert not np.allclose(evaluator.stats, _pycocotools(_tiny_coco(tiny_coco_dir), dets).stats)


def test_matches_pycocotools_beyond_max_dets(tiny_coco_dir):
  gt = _tiny_coco(tiny_coco_dir)
  dets = _jittered_detections(gt, 3)
  # 150 detections for one (image, category); the true ones scored lowest, so truncation at 100
  # drops them and more allowed detections change AR.
  a = gt["annotations"][0]
  rng = np.random.default_rng(1)
  x, y, w, h = a["bbox"]
  for i in range(150):
    true_box = i % 50 == 0
    dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                 "bbox": [x, y, w, h] if true_box else [x + w + 5 + i, y, w / 2, h],
                 "score": 0.01 if true_box else float(rng.uniform(0.2, 1.0))})
  _assert_matches_pycocotools(coco_evaluate(gt, dets), _pycocotools(gt, dets))

  max_dets = (1, 10, 200)
  ours = coco_evaluate(gt, dets, max_dets=max_dets)
  evaluator = _pycocotools(gt, dets, max_dets)
  # COCOeval's stats[0] hard-codes maxDets=100 (-1 here); we use max_dets[-1] and compare with
  # its precision array directly.
  assert ours["AP"] == pytest.approx(_pycocotools_mean(evaluator.eval["precision"][..., 0, -1]),
                                     abs=ATOL)
  np.testing.assert_allclose(ours["stats"][1:], evaluator.stats[1:], rtol=0, atol=ATOL)
  assert ours["AR200"] == ours["stats"][8]
  assert ours["AR200"] != pytest.approx(coco_evaluate(gt, dets)["AR100"])


def test_matches_pycocotools_with_missing_detections_and_empty_images(tiny_coco_dir):
  gt = _tiny_coco(tiny_coco_dir)
  dets = _jittered_detections(gt, 5)
  frequent = max({a["category_id"] for a in gt["annotations"]},
                 key=lambda c: sum(a["category_id"] == c for a in gt["annotations"]))
  dets = [d for d in dets if d["category_id"] != frequent]  # a category with gt but no dets
  empty_image = max(img["id"] for img in gt["images"]) + 1
  gt["images"].append({"id": empty_image, "width": 640, "height": 480})
  for i in range(5):  # detections on an image without gt are false positives
    dets.append({"image_id": empty_image, "category_id": gt["annotations"][i]["category_id"],
                 "bbox": [10.0 * i, 20.0, 50.0, 60.0], "score": 0.9 - 0.1 * i})
  ours = coco_evaluate(gt, dets)
  _assert_matches_pycocotools(ours, _pycocotools(gt, dets))
  assert ours["per_class"][frequent]["AP"] == 0.0
  unused = [c["id"] for c in gt["categories"]
            if all(a["category_id"] != c["id"] for a in gt["annotations"])]
  assert unused and all(ours["per_class"][c]["AP"] == -1.0 for c in unused)


def test_equal_iou_and_equal_score_ties():
  # d1 has IoU 90/110 with both boxes; COCOeval gives it the later box, which leaves the earlier
  # one for d2 (IoU 90/110 with it, 70/130 with the other) at thresholds above 0.55.
  ann = lambda i, x, area: {"id": i, "image_id": 1, "category_id": 1, "bbox": [x, 0, 10, 10],
                            "area": area, "iscrowd": 0}
  gt = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1, "name": "a"}],
        "annotations": [ann(1, 0, 100), ann(2, 2, 2000), ann(3, 50, 100)]}
  gt["annotations"].append({**ann(4, 0, 100), "image_id": 2})
  dets = [{"image_id": 1, "category_id": 1, "bbox": [1, 0, 10, 10], "score": 0.9},
          {"image_id": 1, "category_id": 1, "bbox": [-1, 0, 10, 10], "score": 0.8},
          # equal scores across and within images: order decides precision
          {"image_id": 2, "category_id": 1, "bbox": [30, 30, 10, 10], "score": 0.5},
          {"image_id": 1, "category_id": 1, "bbox": [50, 0, 10, 10], "score": 0.5},
          {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5}]
  ours = coco_evaluate(gt, dets)
  evaluator = _pycocotools(gt, dets)
  _assert_matches_pycocotools(ours, evaluator)
  assert 0 < ours["AP"] < 1 and ours["APm"] > -1


def test_empty_area_ranges_are_minus_one(tiny_coco_dir):
  gt = _tiny_coco(tiny_coco_dir)
  gt["annotations"] = [a for a in gt["annotations"] if a["area"] >= 96 ** 2]  # large only
  dets = _jittered_detections(gt, 8)
  ours = coco_evaluate(gt, dets)
  _assert_matches_pycocotools(ours, _pycocotools(gt, dets))
  assert ours["APs"] == ours["APm"] == ours["ARs"] == ours["ARm"] == -1.0


def test_matches_pycocotools_on_bccd(bccd_dir):
  gt = _bccd_ground_truth(bccd_dir)
  assert len(gt["images"]) == 72
  for seed in (0, 1):
    dets = _jittered_detections(gt, seed, random_per_image=3)
    _assert_matches_pycocotools(coco_evaluate(gt, dets), _pycocotools(gt, dets))


def test_ignore_flag(tiny_coco_dir):
  gt = _tiny_coco(tiny_coco_dir)
  flagged = {a["id"] for a in gt["annotations"][1::4]}
  for a in gt["annotations"]:
    a["ignore"] = int(a["id"] in flagged)
  dets = _jittered_detections(gt, 2)
  # By default the flag is overwritten by iscrowd, as in COCOeval.
  _assert_matches_pycocotools(coco_evaluate(gt, dets), _pycocotools(gt, dets))
  # Honoured, an ignored box behaves as one outside every area range; in COCOeval that is an area
  # above 1e10.
  moved = copy.deepcopy(gt)
  for a in moved["annotations"]:
    if a["id"] in flagged:
      a["area"] = 1e11
  _assert_matches_pycocotools(coco_evaluate(gt, dets, use_ignore_flag=True),
                              _pycocotools(moved, dets))


def test_json_paths(tiny_coco_dir, tmp_path):
  gt = _tiny_coco(tiny_coco_dir)
  dets = _jittered_detections(gt, 4)
  (tmp_path / "dets.json").write_text(json.dumps(dets))
  ours = coco_evaluate(tiny_coco_dir / "instances_train2017_small.json",
                       str(tmp_path / "dets.json"))
  _assert_matches_pycocotools(ours, _pycocotools(gt, dets))


def test_array_helpers(tiny_coco_dir):
  gt = _tiny_coco(tiny_coco_dir)
  dets = _jittered_detections(gt, 6)
  image_ids = sorted(img["id"] for img in gt["images"])
  rows = {i: [a for a in gt["annotations"] if a["image_id"] == i] for i in image_ids}
  n = max(len(r) for r in rows.values()) + 2
  boxes = np.zeros((len(image_ids), n, 4))
  labels = np.full((len(image_ids), n), -1)
  areas, crowd = np.zeros((len(image_ids), n)), np.zeros((len(image_ids), n), int)
  for b, i in enumerate(image_ids):
    for j, a in enumerate(rows[i]):
      x, y, w, h = a["bbox"]
      boxes[b, j] = [x, y, x + w, y + h]
      labels[b, j], areas[b, j], crowd[b, j] = a["category_id"], a["area"], a["iscrowd"]
  num_valid = np.array([len(rows[i]) for i in image_ids])
  rebuilt = ground_truth_from_arrays(np.array(image_ids), boxes, labels, num_valid,
                                     categories=gt["categories"], iscrowd=crowd, areas=areas)
  assert len(rebuilt["annotations"]) == len(gt["annotations"])
  ref = {(a["image_id"], tuple(a["bbox"])) for a in gt["annotations"]}
  assert len({(a["image_id"], tuple(np.round(a["bbox"], 6))) for a in rebuilt["annotations"]}
             & {(i, tuple(np.round(b, 6))) for i, b in ref}) == len(ref)

  # Detections: contiguous class indices mapped through category_ids, padded rows.
  cat_ids = [c["id"] for c in gt["categories"]]
  per_image = {i: [d for d in dets if d["image_id"] == i] for i in image_ids}
  m = max(len(v) for v in per_image.values()) + 3
  d_boxes = np.full((len(image_ids), m, 4), np.nan)  # padding is never read
  d_scores, d_labels = np.zeros((len(image_ids), m)), np.zeros((len(image_ids), m), int)
  for b, i in enumerate(image_ids):
    for j, d in enumerate(per_image[i]):
      x, y, w, h = d["bbox"]
      d_boxes[b, j] = [x, y, x + w, y + h]
      d_scores[b, j], d_labels[b, j] = d["score"], cat_ids.index(d["category_id"])
  arrays = dict(image_ids=np.array(image_ids), boxes_xyxy=d_boxes, scores=d_scores,
                labels=d_labels, num_valid=np.array([len(per_image[i]) for i in image_ids]),
                category_ids=cat_ids)
  converted = detections_from_arrays(**arrays)
  assert len(converted) == len(dets)
  json.dumps(converted)  # plain Python numbers
  want = _pycocotools(gt, dets)
  _assert_matches_pycocotools(coco_evaluate(rebuilt, converted), want)
  _assert_matches_pycocotools(coco_evaluate(gt, arrays), want)


# ----------------------------------------------------------------------------- VOC AP50


def _hand_built_case():
  def ann(i, cat, bbox, crowd=0):
    return {"id": i, "image_id": 1, "category_id": cat, "bbox": bbox,
            "area": bbox[2] * bbox[3], "iscrowd": crowd}

  gt = {"images": [{"id": 1}, {"id": 2}],
        "categories": [{"id": c, "name": n} for c, n in enumerate("ABCD", start=1)],
        "annotations": [ann(1, 1, [0, 0, 10, 10]), ann(2, 1, [20, 0, 10, 10]),
                        ann(3, 1, [40, 0, 10, 10]), ann(4, 2, [0, 20, 10, 10]),
                        ann(5, 2, [20, 20, 10, 10], crowd=1), ann(6, 4, [0, 40, 10, 10])]}

  def det(cat, bbox, score, image_id=1):
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}

  dets = [
      # A: TP, duplicate of the same box (IoU 90/110) -> FP, TP, FP; 3 positives.
      det(1, [0, 0, 10, 10], .9), det(1, [1, 0, 10, 10], .8), det(1, [20, 0, 10, 10], .7),
      det(1, [100, 100, 10, 10], .6),
      # B: on the crowd box -> ignored, TP, IoU 1/3 -> FP; 1 positive.
      det(2, [20, 20, 10, 10], .95), det(2, [0, 20, 10, 10], .5), det(2, [5, 20, 10, 10], .4),
      # C has no ground truth: left out of the mean.
      det(3, [0, 0, 5, 5], .3),
      # D: IoU exactly 0.5 counts (>=), then a false positive on the other image.
      det(4, [0, 40, 10, 5], .7), det(4, [0, 40, 10, 10], .2, image_id=2),
  ]
  return gt, dets


def test_voc_ap50_hand_built():
  gt, dets = _hand_built_case()
  # A: recall 1/3, 1/3, 2/3, 2/3 at precision 1, 1/2, 2/3, 1/2 -> 1/3 * 1 + 1/3 * 2/3 = 5/9.
  # B: recall 1 at precision 1 -> 1. D: recall 1 at precision 1, then 1/2 -> 1.
  want = {1: 5 / 9, 2: 1.0, 3: -1.0, 4: 1.0}
  ref_per_class, ref_mean = _voc_ap50_reference(gt, dets)
  assert ref_per_class == pytest.approx(want, abs=1e-12)
  ours = coco_evaluate(gt, dets)
  assert {c: v["VOC_AP50"] for c, v in ours["per_class"].items()} == pytest.approx(want,
                                                                                  abs=1e-12)
  assert ours["VOC_AP50"] == pytest.approx(23 / 27, abs=1e-12) == ref_mean


@pytest.mark.parametrize("seed", [0, 1])
def test_voc_ap50_matches_reference(tiny_coco_dir, seed):
  gt = _tiny_coco(tiny_coco_dir)
  for a in gt["annotations"][::6]:
    a["iscrowd"] = 1
  dets = _jittered_detections(gt, seed, duplicate=0.5)
  for i, d in enumerate(dets):  # distinct scores: the reference breaks ties by image id only
    d["score"] = float(d["score"] + 1e-7 * i)
  ref_per_class, ref_mean = _voc_ap50_reference(gt, dets)
  ours = coco_evaluate(gt, dets)
  assert {c: v["VOC_AP50"] for c, v in ours["per_class"].items()} == pytest.approx(ref_per_class,
                                                                                  abs=1e-12)
  assert ours["VOC_AP50"] == pytest.approx(ref_mean, abs=1e-12)


# ----------------------------------------------------------------------------- input validation


def _set(path, value):
  def edit(gt, dets):
    target = {"gt": gt, "dets": dets}
    for key in path[:-1]:
      target = target[key]
    if value is _DELETE:
      del target[path[-1]]
    else:
      target[path[-1]] = value
  return edit


_DELETE = object()


@pytest.mark.parametrize("edit, match", [
    (_set(("gt", "annotations", 3, "bbox"), _DELETE),
     r"annotations'\]\[3\] \(id=\d+\) is missing key\(s\) \['bbox'\]"),
    (_set(("gt", "annotations", 4, "area"), _DELETE), r"\[4\].*missing key\(s\) \['area'\]"),
    (_set(("gt", "annotations", 5, "bbox"), [1.0, 2.0, -3.0, 4.0]),
     r"annotations'\]\[5\].*width, height >= 0; got \[1.0, 2.0, -3.0, 4.0\]"),
    (_set(("gt", "annotations", 6, "bbox"), [1.0, float("nan"), 3.0, 4.0]),
     r"annotations'\]\[6\].*finite"),
    (_set(("gt", "annotations", 6, "bbox"), [1.0, 2.0, 3.0]), r"annotations'\]\[6\].*\[x, y"),
    (_set(("gt", "annotations", 7, "area"), float("inf")), r"\[7\].*'area' must be a finite"),
    (_set(("gt", "annotations", 8, "image_id"), 123456789),
     r"annotations'\]\[8\].*image_id=123456789 is not one of the ground truth's image ids"),
    (_set(("gt", "annotations", 9, "category_id"), 999), r"\[9\].*category_id=999"),
    (_set(("gt", "annotations", 2, "iscrowd"), 2), r"\[2\].*'iscrowd' must be 0 or 1"),
    (_set(("gt", "images"), _DELETE), r"missing the 'images' list"),
    (_set(("gt", "images", 1, "id"), _DELETE), r"images'\]\[1\] is missing key\(s\) \['id'\]"),
    (_set(("dets", 0, "score"), _DELETE), r"detections\[0\] is missing key\(s\) \['score'\]"),
    (_set(("dets", 1, "score"), float("nan")), r"detections\[1\]: 'score' must be a finite"),
    (_set(("dets", 2, "bbox"), [0.0, 0.0, 5.0, -1.0]), r"detections\[2\].*width, height >= 0"),
    (_set(("dets", 3, "image_id"), -7), r"detections\[3\]: image_id=-7 is not one of"),
    (_set(("dets", 4, "category_id"), 0), r"detections\[4\]: category_id=0 is not one of"),
    (_set(("dets", 5, "image_id"), "000139"), r"detections\[5\]: image_id='000139'"),
])
def test_malformed_input_raises(tiny_coco_dir, edit, match):
  gt = _tiny_coco(tiny_coco_dir)
  dets = _jittered_detections(gt, 0)
  edit(gt, dets)
  with pytest.raises(ValueError, match=match):
    coco_evaluate(gt, dets)


def test_duplicate_ids_and_bad_arguments(tiny_coco_dir, tmp_path):
  gt = _tiny_coco(tiny_coco_dir)
  dets = _jittered_detections(gt, 0)
  dup = copy.deepcopy(gt)
  dup["annotations"][7]["id"] = dup["annotations"][2]["id"]
  with pytest.raises(ValueError, match=r"annotations'\]\[7\] has id .* already used by .*\[2\]"):
    coco_evaluate(dup, dets)
  dup = copy.deepcopy(gt)
  dup["images"].append(dict(dup["images"][0]))
  with pytest.raises(ValueError, match=r"images'\]\[16\] has duplicate id"):
    coco_evaluate(dup, dets)
  with pytest.raises(ValueError, match="iou_type must be 'bbox'"):
    coco_evaluate(gt, dets, iou_type="segm")
  with pytest.raises(ValueError, match="max_dets must be 3 increasing"):
    coco_evaluate(gt, dets, max_dets=(10, 1, 100))
  with pytest.raises(FileNotFoundError, match="missing.json"):
    coco_evaluate(tmp_path / "missing.json", dets)
  with pytest.raises(ValueError, match="detections must be a list"):
    coco_evaluate(gt, 3)
  with pytest.raises(ValueError, match="arguments of detections_from_arrays"):
    coco_evaluate(gt, {"boxes": np.zeros((1, 1, 4))})
  with pytest.raises(ValueError, match=r"boxes_xyxy\[0, 1\] = \[5.0, 0.0, 4.0, 1.0\]"):
    detections_from_arrays([1], [[[0, 0, 1, 1], [5, 0, 4, 1]]], [[.5, .5]], [[1, 1]])
  with pytest.raises(ValueError, match=r"scores must have shape \[B, N\]=\[1, 2\]"):
    detections_from_arrays([1], np.zeros((1, 2, 4)), [.5, .5], [[1, 1]])


def test_no_detections(tiny_coco_dir):
  gt = _tiny_coco(tiny_coco_dir)
  ours = coco_evaluate(gt, [])
  # pycocotools cannot load an empty result list; one far-away false positive scores the same.
  far = [{"image_id": gt["images"][0]["id"], "category_id": gt["annotations"][0]["category_id"],
          "bbox": [5000.0, 5000.0, 1.0, 1.0], "score": 0.5}]
  _assert_matches_pycocotools(ours, _pycocotools(gt, far))
  assert ours["AP"] == 0.0 and ours["VOC_AP50"] == 0.0
