"""COCO-style detection evaluation on the host (NumPy), reproducing ``pycocotools``' COCOeval.

:func:`coco_evaluate` is an independent implementation of ``COCOeval(gt, dt, "bbox")`` followed by
``evaluate()``, ``accumulate()`` and ``summarize()``; it does not use pycocotools. It returns the
same 12 summary numbers (agreement to 1e-4 is tested; on our data they agree to the last bit),
per-class AP and a Pascal VOC-style AP50. Semantics reproduced from COCOeval:

* Boxes are ``[x, y, w, h]`` pixels with no ``+1``; IoU is computed with the same floating-point
  operations as pycocotools' ``bbIou``. A crowd ground truth (``iscrowd=1``) uses
  ``intersection / detection area`` and can absorb any number of detections.
* A ground truth is ignored (neither a false negative nor able to make a true positive) if it is a
  crowd or its annotation ``area`` (not the box area) lies outside the area range. Detections
  matched to an ignored ground truth, and unmatched detections whose box area ``w * h`` lies
  outside the area range, are ignored (neither true nor false positives).
* Detections of each (image, category) are sorted by descending score with a stable sort (ties
  keep input order) and truncated to ``max(max_dets)``; the ``m``-th summary keeps the first
  ``max_dets[m]`` of each (image, category), as COCOeval does (the limit is per image *and*
  category, not per image).
* Greedy matching per IoU threshold in score order: a detection takes the unmatched,
  non-ignored ground truth of highest IoU ``>= t`` (the last such one on ties, as COCOeval's
  ``>=`` update does), falling back to ignored ones only when no regular one qualifies.
* Precision at the 101 recall thresholds ``0:0.01:1`` after the monotone precision envelope,
  with detections of all images merged in descending score order (stable; ties ordered by image
  id, then by rank within the image, as COCOeval's concatenation + mergesort).
* Categories whose area range holds no non-ignored ground truth are excluded from the means; a
  mean over nothing is ``-1`` (e.g. ``APs`` when there are no small objects).

Deliberate differences (none of which arises on well-formed COCO data):

* A ground-truth ``ignore`` field is *overwritten* by ``iscrowd`` in COCOeval and so has no
  effect; that is the default here. ``use_ignore_flag=True`` honours it (an ``ignore=1``
  ground truth is treated like one outside the area range).
* COCOeval marks a match by the ground truth's ``id`` and so counts a detection matched to an
  annotation with ``id == 0`` as a false positive; here matches do not depend on ids.
* ``AP`` uses ``max_dets[-1]`` detections; COCOeval hard-codes 100 (the same for the default).
* Unknown image or category ids in the detections raise ``ValueError`` (``loadRes`` asserts on
  unknown images; COCOeval silently drops unknown categories).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from jaxvision.metrics import coco_format
from jaxvision.metrics.coco_format import (
    DetectionArrays,
    GroundTruthArrays,
    detections_from_arrays,
    ground_truth_from_arrays,
)

__all__ = [
    "coco_evaluate",
    "detections_from_arrays",
    "ground_truth_from_arrays",
    "IOU_THRESHOLDS",
    "RECALL_THRESHOLDS",
    "AREA_RANGES",
    "VOC_IOU_THRESHOLD",
]

# The same np.linspace calls as pycocotools' Params.setDetParams, so the values match bit for bit.
IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
# (label, min area, max area), both bounds inclusive; "all" is first.
AREA_RANGES = (("all", 0 ** 2, 1e5 ** 2), ("small", 0 ** 2, 32 ** 2),
               ("medium", 32 ** 2, 96 ** 2), ("large", 96 ** 2, 1e5 ** 2))
VOC_IOU_THRESHOLD = 0.5
# COCOeval clips the threshold so that an IoU of exactly 1 still matches at t = 1.
_MAX_IOU_THRESHOLD = 1 - 1e-10
# Element budgets for the padded per-(image, category) blocks processed at once.
_IOU_BLOCK_BUDGET = 1 << 19
_MATCH_BLOCK_BUDGET = 1 << 15


def _pair_iou(det_boxes, gt_boxes, crowd):
  """IoU of every detection with every ground truth of the same (image, category).

  Mirrors pycocotools' ``bbIou`` operation for operation, so that matching at a threshold decides
  exactly as COCOeval does.

  Args:
    det_boxes: [P, D, 4] float64 ``[x, y, w, h]``.
    gt_boxes: [P, G, 4] float64 ``[x, y, w, h]``.
    crowd: [P, G] bool.

  Returns:
    (coco_iou, iou), both [P, D, G]: ``coco_iou`` divides by the detection area for crowd ground
    truth, ``iou`` is the plain IoU (used for the VOC metric).
  """
  d = det_boxes[:, :, None, :]  # [P, D, 1, 4]
  g = gt_boxes[:, None, :, :]  # [P, 1, G, 4]
  w = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
  h = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
  overlap = (w > 0) & (h > 0)
  inter = w * h
  det_area = d[..., 2] * d[..., 3]
  union = det_area + g[..., 2] * g[..., 3] - inter
  safe = lambda x: np.where(overlap, x, 1.0)  # noqa: E731
  iou = np.where(overlap, inter / safe(union), 0.0)
  coco_iou = np.where(overlap & crowd[:, None, :], inter / safe(det_area), iou)
  return coco_iou, iou


def _greedy_match(iou, gt_ignore, crowd, num_ranks):
  """COCOeval's per-image greedy matching for a block of (image, category) pairs.

  Args:
    iou: [P, D, G] float64 (COCO IoU), ``-1`` at padding; detections in descending score order.
    gt_ignore: [P, A, G] bool, ground truth ignored in each area range.
    crowd: [P, G] bool.
    num_ranks: match only the first ``num_ranks`` detections (``max(max_dets)``).

  Returns:
    (matched, on_ignored), each [P, A, T, min(D, num_ranks)] bool: the detection matched some
    ground truth / matched an ignored ground truth, per area range and IoU threshold.
  """
  p, d_max, g_max = iou.shape
  a_num, t_num = gt_ignore.shape[1], len(IOU_THRESHOLDS)
  d_max = min(d_max, num_ranks)
  thresholds = np.minimum(IOU_THRESHOLDS, _MAX_IOU_THRESHOLD)[:, None]  # [T, 1]
  ignore = gt_ignore[:, :, None, :]  # [P, A, 1, G]
  reusable = crowd[:, None, None, :]  # [P, 1, 1, G]
  gt_taken = np.zeros((p, a_num, t_num, g_max), bool)
  matched = np.zeros((p, a_num, t_num, d_max), bool)
  on_ignored = np.zeros((p, a_num, t_num, d_max), bool)
  gt_pos = np.arange(g_max)
  for j in range(d_max):
    row = iou[:, j, None, None, :]  # [P, 1, 1, G]
    cand = (row >= thresholds) & (reusable | ~gt_taken)  # [P, A, T, G]
    has_regular = np.any(cand & ~ignore, axis=-1, keepdims=True)
    cand &= ~(has_regular & ignore)  # a regular match beats any ignored one
    best = np.where(cand, row, -np.inf)[..., ::-1]
    choice = g_max - 1 - np.argmax(best, axis=-1)  # the last of equal maxima
    found = np.any(cand, axis=-1)
    hit = (gt_pos == choice[..., None]) & found[..., None]  # [P, A, T, G]
    gt_taken |= hit
    matched[..., j] = found
    on_ignored[..., j] = np.any(hit & ignore, axis=-1)
  return matched, on_ignored


def _blocks(det_count, gt_count):
  """Splits pairs into blocks of similar size whose padded arrays stay within the budgets."""
  order = np.lexsort((det_count, gt_count))
  blocks, start, d_max, g_max = [], 0, 0, 0
  for i, pair in enumerate(order):
    nd, ng = max(d_max, det_count[pair]), max(g_max, gt_count[pair])
    n = i - start + 1
    if n > 1 and (n * nd * ng > _IOU_BLOCK_BUDGET or n * ng > _MATCH_BLOCK_BUDGET):
      blocks.append(order[start:i])
      start, nd, ng = i, det_count[pair], gt_count[pair]
    d_max, g_max = nd, ng
  if start < len(order):
    blocks.append(order[start:])
  return blocks


def _match_all(gt: GroundTruthArrays, dt: DetectionArrays, gt_ignore, num_ranks):
  """Matches detections to ground truth per (image, category), for every area range.

  Args:
    gt_ignore: [G, A] bool, ground truth ignored per area range (crowd, flag or area).

  Returns:
    A dict of per-detection arrays in (category, image, descending score) order: ``order`` [N]
    (index into the input detections), ``rank`` [N] within its (image, category), ``matched`` and
    ``on_ignored`` [N, A, T] (for ``rank < num_ranks``), ``voc_iou`` [N] (best plain IoU with a
    ground truth of its pair, -1 if none) and ``voc_gt`` [N] (that ground truth's index, first
    of equal maxima, -1 if none).
  """
  n_img = len(gt.image_ids)
  n_dt = len(dt.scores)
  a_num, t_num = gt_ignore.shape[1], len(IOU_THRESHOLDS)
  dt_key = dt.category_index * n_img + dt.image_index
  order = np.lexsort((np.arange(n_dt), -dt.scores, dt_key))
  dt_key_sorted = dt_key[order]
  d_keys, d_start, d_count = np.unique(dt_key_sorted, return_index=True, return_counts=True)
  rank = np.arange(n_dt) - np.repeat(d_start, d_count)

  gt_key = gt.category_index * n_img + gt.image_index
  gt_order = np.argsort(gt_key, kind="stable")
  g_keys, g_start, g_count = np.unique(gt_key[gt_order], return_index=True,
                                       return_counts=True)

  matched = np.zeros((n_dt, a_num, t_num), bool)
  on_ignored = np.zeros((n_dt, a_num, t_num), bool)
  voc_iou = np.full(n_dt, -1.0)
  voc_gt = np.full(n_dt, -1, np.int64)

  # Only pairs with both detections and ground truth need matching.
  _, d_sel, g_sel = np.intersect1d(d_keys, g_keys, assume_unique=True, return_indices=True)
  for block in _blocks(d_count[d_sel], g_count[g_sel]):
    ds, dc = d_start[d_sel[block]], d_count[d_sel[block]]
    gs, gc = g_start[g_sel[block]], g_count[g_sel[block]]
    d_pos = np.arange(dc.max())
    g_pos = np.arange(gc.max())
    d_valid = d_pos < dc[:, None]  # [P, D]
    g_valid = g_pos < gc[:, None]  # [P, G]
    d_idx = np.where(d_valid, ds[:, None] + d_pos, 0)  # into the sorted detections
    g_idx = gt_order[np.where(g_valid, gs[:, None] + g_pos, 0)]  # into the ground truth
    crowd = gt.iscrowd[g_idx] & g_valid
    coco_iou, iou = _pair_iou(dt.boxes[order[d_idx]], gt.boxes[g_idx], crowd)
    pad = ~(d_valid[:, :, None] & g_valid[:, None, :])
    coco_iou[pad] = -1.0
    iou[pad] = -1.0

    best = np.argmax(iou, axis=-1)  # [P, D], first of equal maxima
    voc_iou[d_idx[d_valid]] = np.take_along_axis(iou, best[..., None], -1)[..., 0][d_valid]
    voc_gt[d_idx[d_valid]] = np.take_along_axis(g_idx, best, -1)[d_valid]

    ignore = np.swapaxes(gt_ignore[g_idx], 1, 2) | ~g_valid[:, None, :]  # [P, A, G]
    m, ig = _greedy_match(coco_iou, ignore, crowd, num_ranks)
    keep = d_valid[:, :m.shape[-1]]
    rows = d_idx[:, :m.shape[-1]][keep]
    matched[rows] = np.moveaxis(m, -1, 1)[keep]
    on_ignored[rows] = np.moveaxis(ig, -1, 1)[keep]
  return dict(order=order, rank=rank, matched=matched, on_ignored=on_ignored,
              voc_iou=voc_iou, voc_gt=voc_gt)


def _precision_recall(matched, ignored, num_gt):
  """COCOeval.accumulate for one category and max-dets setting, all area ranges and thresholds.

  Args:
    matched: [n, A, T] bool, detections in evaluation (descending score) order.
    ignored: [n, A, T] bool.
    num_gt: [A] int, non-ignored ground truth per area range.

  Returns:
    precision [T, R, A] and recall [T, A]; -1 where ``num_gt == 0``.
  """
  n, a_num, t_num = matched.shape
  r_num = len(RECALL_THRESHOLDS)
  precision = np.zeros((t_num, r_num, a_num))
  recall = np.zeros((t_num, a_num))
  if n:
    tp = np.cumsum(matched & ~ignored, axis=0)  # [n, A, T] int
    fp = np.cumsum(~matched & ~ignored, axis=0).astype(np.float64)
    tp_f = tp.astype(np.float64)
    pr = tp_f / (fp + tp_f + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1], axis=0)[::-1]  # the monotone precision envelope
    recall = tp_f[-1].T / np.maximum(num_gt, 1)  # [T, A]
    # The first index where recall tp/num_gt reaches each threshold is where the integer tp
    # count reaches the smallest count c whose float quotient c/num_gt does: exact, and it lets
    # one searchsorted handle all (A, T) columns (offset so the columns form one sorted array).
    need = np.stack([np.searchsorted(np.arange(g + 1) / g if g else np.zeros(1),
                                     RECALL_THRESHOLDS, side="left") for g in num_gt])  # [A, R]
    cols = np.moveaxis(tp, 0, -1).reshape(a_num * t_num, n)  # [(A T), n]
    offset = np.arange(a_num * t_num)[:, None] * (n + 1)
    first = np.searchsorted((cols + offset).ravel(),
                            (np.repeat(need, t_num, axis=0) + offset).ravel(), side="left")
    first = first.reshape(a_num * t_num, r_num) - np.arange(a_num * t_num)[:, None] * n
    pr_cols = np.moveaxis(pr, 0, -1).reshape(a_num * t_num, n)
    q = np.where(first < n, np.take_along_axis(pr_cols, np.minimum(first, n - 1), -1), 0.0)
    precision = np.moveaxis(q.reshape(a_num, t_num, r_num), 0, -1)  # [T, R, A]
  precision[:, :, num_gt == 0] = -1.0
  recall[:, num_gt == 0] = -1.0
  return precision, recall


def _voc_average_precision(tp, fp, num_gt):
  """All-point interpolated AP (Pascal VOC 2010+) from per-detection tp/fp in score order."""
  ctp, cfp = np.cumsum(tp, dtype=np.float64), np.cumsum(fp, dtype=np.float64)
  rec = np.concatenate([[0.0], ctp / num_gt, [1.0]])
  prec = np.concatenate([[0.0], ctp / np.maximum(ctp + cfp, 1.0), [0.0]])
  prec = np.maximum.accumulate(prec[::-1])[::-1]
  step = np.flatnonzero(rec[1:] != rec[:-1])
  return float(np.sum((rec[step + 1] - rec[step]) * prec[step + 1]))


def _mean_valid(x) -> float:
  """COCOeval.summarize's mean over entries > -1, or -1 if there are none."""
  x = np.asarray(x)
  valid = x[x > -1]
  return float(np.mean(valid)) if valid.size else -1.0


def _check_max_dets(max_dets) -> tuple[int, int, int]:
  ok = (isinstance(max_dets, Sequence) and len(max_dets) == 3
        and all(isinstance(m, (int, np.integer)) and not isinstance(m, bool) and m > 0
                for m in max_dets)
        and list(max_dets) == sorted(set(max_dets)))
  if not ok:
    raise ValueError("max_dets must be 3 increasing positive ints (COCO uses (1, 10, 100)); "
                     f"got {max_dets!r}")
  return tuple(int(m) for m in max_dets)


def coco_evaluate(ground_truth: Mapping | str | os.PathLike,
                  detections: Sequence[Mapping] | Mapping | str | os.PathLike, *,
                  iou_type: str = "bbox",
                  max_dets: Sequence[int] = (1, 10, 100),
                  use_ignore_flag: bool = False) -> dict:
  """Evaluates detections against COCO-format ground truth, as ``pycocotools``' COCOeval does.

  Args:
    ground_truth: a COCO-format dict (``images``, ``annotations``, ``categories``) or the path
      of such a JSON file. Annotations need ``image_id``, ``category_id``, ``bbox`` ``[x, y, w,
      h]`` (pixels), ``area``; ``iscrowd``/``ignore`` default to 0. Every image listed is
      evaluated, also those without annotations (their detections are false positives).
    detections: a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` (the
      ``loadRes`` format), a path to such a JSON file, or a dict of padded arrays with the
      arguments of :func:`detections_from_arrays` (``image_ids``, ``boxes_xyxy``, ``scores``,
      ``labels`` and optionally ``num_valid``, ``category_ids``).
    iou_type: only ``"bbox"`` is supported.
    max_dets: the three per-(image, category) detection limits of the summary.
    use_ignore_flag: honour the annotations' ``ignore`` field (COCOeval does not; see the module
      docstring).

  Returns:
    A dict with

    * ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR{max_dets[0]}``,
      ``AR{max_dets[1]}``, ``AR{max_dets[2]}`` (``AR1``, ``AR10``, ``AR100`` by default), ``ARs``,
      ``ARm``, ``ARl``: COCOeval's 12 summary numbers (AP over IoU 0.50:0.05:0.95 and the 101
      recall points, mean over categories with ground truth; ``-1`` where no category has
      ground truth in the area range). ``stats``: the same 12 as a list, in that order.
    * ``per_class``: ``{category_id: {"name", "num_gt", "AP", "AP50", "VOC_AP50"}}``, where
      ``AP``/``AP50`` average COCOeval's precision array over area "all" and ``max_dets[-1]``
      exactly as ``summarize`` does, and ``num_gt`` counts non-ignored ground truth. All three
      APs are ``-1`` for a category with no non-ignored ground truth (such categories are left
      out of every mean).
    * ``VOC_AP50``: the mean over categories with ground truth of the Pascal VOC AP at IoU 0.5,
      VOC2010+ convention: all detections of a category (no ``max_dets`` limit) in descending
      score order (ties as in COCO); each takes the ground truth of its image and category with
      the highest plain IoU (no ``+1`` in box sizes; crowd boxes use plain IoU too); if that
      IoU ``>= 0.5`` (as the official MATLAB devkit) it is a true positive when that ground
      truth is not yet detected, a false positive when it is (no fall-back to a second-best
      box), and is ignored when that ground truth is crowd (or ``ignore`` with
      ``use_ignore_flag``), VOC's "difficult"; otherwise a false positive. AP is the area under
      the monotone precision envelope at every recall change (all-point interpolation, not
      the 11-point VOC2007 metric). ``-1`` if no category has ground truth.

  Raises:
    ValueError: malformed input (the message names the record and what was expected), detections
      on images or categories absent from the ground truth, unsupported ``iou_type`` or bad
      ``max_dets``.
    FileNotFoundError: a path that does not exist.
  """
  if iou_type != "bbox":
    raise ValueError(f"iou_type must be 'bbox' (segm and keypoints are not supported); "
                     f"got {iou_type!r}")
  max_dets = _check_max_dets(max_dets)
  gt = coco_format.load_ground_truth(ground_truth)
  if isinstance(detections, Mapping):
    try:
      detections = detections_from_arrays(**detections)
    except TypeError as e:
      raise ValueError("a dict of detection arrays must hold the arguments of "
                       "detections_from_arrays (image_ids, boxes_xyxy, scores, labels[, "
                       f"num_valid, category_ids]); got keys {sorted(detections)}: {e}") from None
  dt = coco_format.load_detections(detections, gt)

  k_num, a_num, t_num = len(gt.category_ids), len(AREA_RANGES), len(IOU_THRESHOLDS)
  lo = np.array([r[1] for r in AREA_RANGES], np.float64)
  hi = np.array([r[2] for r in AREA_RANGES], np.float64)
  difficult = gt.iscrowd | (gt.ignore if use_ignore_flag else False)
  gt_ignore = difficult[:, None] | (gt.area[:, None] < lo) | (gt.area[:, None] > hi)  # [G, A]
  num_gt = np.zeros((k_num, a_num), np.int64)  # [K, A] non-ignored ground truth
  np.add.at(num_gt, gt.category_index, (~gt_ignore).astype(np.int64))

  res = _match_all(gt, dt, gt_ignore, max_dets[-1])
  order, rank = res["order"], res["rank"]
  det_area = dt.boxes[order, 2] * dt.boxes[order, 3]
  outside = (det_area[:, None] < lo) | (det_area[:, None] > hi)  # [N, A]
  ignored = res["on_ignored"] | (~res["matched"] & outside[:, :, None])  # [N, A, T]

  # Evaluation order: per category, descending score, ties by image then rank in the image.
  cat = dt.category_index[order]
  ev = np.lexsort((rank, dt.image_index[order], -dt.scores[order], cat))
  _, cat_start, cat_count = np.unique(cat[ev], return_index=True, return_counts=True)
  cat_slices = {int(cat[ev[s]]): ev[s:s + c] for s, c in zip(cat_start, cat_count)}

  precision = -np.ones((t_num, len(RECALL_THRESHOLDS), k_num, a_num, 3))  # COCOeval's layout
  recall = -np.ones((t_num, k_num, a_num, 3))
  empty = np.zeros(0, np.int64)
  for k in range(k_num):
    idx = cat_slices.get(k, empty)
    for m, limit in enumerate(max_dets):
      sel = idx[rank[idx] < limit]
      precision[:, :, k, :, m], recall[:, k, :, m] = _precision_recall(
          res["matched"][sel], ignored[sel], num_gt[k])

  voc_per_class = _voc_per_class(res["voc_iou"][ev], res["voc_gt"][ev], cat[ev], difficult,
                                 gt.category_index, k_num)
  stats = _summarize(precision, recall)
  names = ["AP", "AP50", "AP75", "APs", "APm", "APl", f"AR{max_dets[0]}", f"AR{max_dets[1]}",
           f"AR{max_dets[2]}", "ARs", "ARm", "ARl"]
  out = dict(zip(names, stats))
  out["stats"] = stats
  out["per_class"] = {
      cat_id: {
          "name": gt.category_names[k],
          "num_gt": int(num_gt[k, 0]),
          "AP": _mean_valid(precision[:, :, k, 0, -1]),
          "AP50": _mean_valid(precision[_iou_index(.5), :, k, 0, -1]),
          "VOC_AP50": voc_per_class[k],
      } for k, cat_id in enumerate(gt.category_ids)}
  out["VOC_AP50"] = _mean_valid(voc_per_class)
  return out


def _iou_index(threshold: float) -> np.ndarray:
  # As summarize: exact equality with the linspace value (0.5 and 0.75 are both exact).
  return np.where(threshold == IOU_THRESHOLDS)[0]


def _summarize(precision, recall) -> list[float]:
  """COCOeval.summarize's 12 numbers from precision [T, R, K, A, M] and recall [T, K, A, M]."""
  ap = lambda a=0, t=slice(None): _mean_valid(precision[t, :, :, a, -1])  # noqa: E731
  ar = lambda a=0, m=-1: _mean_valid(recall[:, :, a, m])  # noqa: E731
  return [ap(), ap(t=_iou_index(.5)), ap(t=_iou_index(.75)), ap(1), ap(2), ap(3),
          ar(m=0), ar(m=1), ar(m=2), ar(1), ar(2), ar(3)]


def _voc_per_class(best_iou, best_gt, cat, difficult, gt_category, k_num):
  """Pascal VOC AP50 per category (-1 where the category has no non-difficult ground truth).

  Args:
    best_iou, best_gt: [N] each detection's highest plain IoU with a ground truth of its (image,
      category) and that ground truth's index (-1 where there is none), in evaluation order.
    cat: [N] category index of each detection, same order.
    difficult: [G] bool; gt_category: [G] category index of each ground truth.
  """
  hit = best_iou >= VOC_IOU_THRESHOLD
  skip = np.zeros(len(best_gt), bool)  # detections whose best box is "difficult"
  skip[hit] = difficult[best_gt[hit]]
  tp = np.zeros(len(best_gt), bool)
  cand = np.flatnonzero(hit & ~skip)
  _, first = np.unique(best_gt[cand], return_index=True)  # the first detection of a box wins
  tp[cand[first]] = True
  num_pos = np.bincount(gt_category[~difficult], minlength=k_num)
  out = np.full(k_num, -1.0)
  for k in np.flatnonzero(num_pos):
    sel = (cat == k) & ~skip
    out[k] = _voc_average_precision(tp[sel], ~tp[sel], num_pos[k])
  return out
