"""Multi-label metrics (host side, NumPy float64): average precision, thresholds, P/R/F1.

Inputs are a split's label sets ``labels`` (multi-hot ``[N, K]``, any numeric or bool dtype,
non-zero meaning present) and the model's ``scores`` (``[N, K]`` float, e.g. sigmoid
probabilities; higher means more likely present).

* :func:`average_precision`: per label, the area under the precision-recall curve as
  scikit-learn's ``average_precision_score`` computes it (no interpolation):
  ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds in decreasing order
  (tied scores form one threshold). A label with no positive example has no AP (NaN here,
  ``None`` in reports) and is left out of the mean (scikit-learn would count it as 0).
* :func:`tune_thresholds`: per label, the threshold maximising F1 on the given (validation)
  examples; applied unchanged to other splits with :func:`precision_recall_f1`.
* :func:`multilabel_report`: all of it as a JSON-ready dict.

A label is predicted present when ``score >= threshold``. Precision, recall or F1 with a zero
denominator is 0 (scikit-learn's ``zero_division=0``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
  """``labels`` as bool ``[N, K]`` and ``scores`` as float64 ``[N, K]``, checked."""
  labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
  if labels.ndim != 2 or labels.shape != scores.shape:
    raise ValueError(f"expected labels and scores [N, K] of one shape; found {labels.shape} "
                     f"and {scores.shape}")
  if labels.shape[0] == 0:
    raise ValueError("expected at least one example; found N = 0")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores must be finite; found NaN or infinite values")
  return labels != 0, scores


def _curve(positive: np.ndarray, score: np.ndarray):
  """One label's operating points, one per distinct score (highest first).

  Returns ``(thresholds, tp, predicted)``: at threshold ``thresholds[i]`` (predict present
  when ``score >= thresholds[i]``) there are ``tp[i]`` true positives among ``predicted[i]``
  predicted positives.
  """
  order = np.argsort(-score, kind="stable")
  s, y = score[order], positive[order]
  last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each run of ties
  return s[last], np.cumsum(y)[last], last + 1


def average_precision(labels, scores) -> np.ndarray:
  """Per-label average precision, float64 ``[K]`` (NaN for a label with no positives).

  Args:
    labels: multi-hot ``[N, K]``.
    scores: float ``[N, K]``.
  """
  labels, scores = _check(labels, scores)
  out = np.full(labels.shape[1], np.nan)
  for k in range(labels.shape[1]):
    num_pos = labels[:, k].sum()
    if num_pos == 0:
      continue
    _, tp, predicted = _curve(labels[:, k], scores[:, k])
    precision, recall = tp / predicted, tp / num_pos
    out[k] = np.sum(np.diff(np.r_[0.0, recall]) * precision)
  return out


def mean_average_precision(labels, scores) -> float:
  """The mean of :func:`average_precision` over the labels that have a positive example
  (NaN when none has)."""
  ap = average_precision(labels, scores)
  return float(np.mean(ap[~np.isnan(ap)])) if np.any(~np.isnan(ap)) else float("nan")


def tune_thresholds(labels, scores) -> tuple[np.ndarray, np.ndarray]:
  """Per label, the threshold of highest F1 on these examples.

  Among the distinct scores of the label, the operating point ``score >= s`` of highest F1 is
  chosen (the highest such ``s`` on a tie of F1); the threshold returned lies halfway
  between ``s`` and the next lower distinct score (the same predictions on these examples,
  and a margin on both sides for new ones), or is ``s`` itself when ``s`` is the lowest. A
  label with no positive example gets a threshold just above its highest score (nothing
  predicted; its F1 is 0 whatever the threshold).

  Returns:
    ``(thresholds, f1)``: float64 ``[K]`` each; ``f1`` is the F1 the thresholds reach here.
  """
  labels, scores = _check(labels, scores)
  k_labels = labels.shape[1]
  thresholds, best = np.zeros(k_labels), np.zeros(k_labels)
  for k in range(k_labels):
    num_pos = labels[:, k].sum()
    if num_pos == 0:
      thresholds[k] = np.nextafter(scores[:, k].max(), np.inf)
      continue
    s, tp, predicted = _curve(labels[:, k], scores[:, k])
    f1 = 2.0 * tp / (predicted + num_pos)
    i = int(np.argmax(f1))  # the first maximum: the highest threshold
    best[k] = f1[i]
    thresholds[k] = s[i]
    if i + 1 < len(s):
      middle = s[i + 1] + (s[i] - s[i + 1]) / 2
      if s[i + 1] < middle <= s[i]:
        thresholds[k] = middle
  return thresholds, best


def precision_recall_f1(labels, predictions) -> dict[str, np.ndarray]:
  """Per-label precision, recall, F1 and support of multi-hot ``predictions [N, K]``.

  Returns:
    ``{'precision', 'recall', 'f1'}`` float64 ``[K]``, ``'support'`` int64 ``[K]`` (positives),
    and ``'tp'``, ``'fp'``, ``'fn'`` int64 ``[K]``.
  """
  labels, predictions = np.asarray(labels) != 0, np.asarray(predictions)
  if predictions.shape != labels.shape:
    raise ValueError(f"expected labels and predictions [N, K] of one shape; found "
                     f"{labels.shape} and {predictions.shape}")
  predictions = predictions != 0
  tp = np.sum(labels & predictions, axis=0)
  fp = np.sum(~labels & predictions, axis=0)
  fn = np.sum(labels & ~predictions, axis=0)
  precision = np.divide(tp, tp + fp, out=np.zeros(len(tp)), where=tp + fp > 0)
  recall = np.divide(tp, tp + fn, out=np.zeros(len(tp)), where=tp + fn > 0)
  f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(len(tp)), where=2 * tp + fp + fn > 0)
  return {"precision": precision, "recall": recall, "f1": f1,
          "support": (tp + fn).astype(np.int64), "tp": tp.astype(np.int64),
          "fp": fp.astype(np.int64), "fn": fn.astype(np.int64)}


def multilabel_report(labels, scores, thresholds, class_names: Sequence[str]) -> dict:
  """Average precision and thresholded precision/recall/F1 of one split, JSON-ready.

  Args:
    labels: multi-hot ``[N, K]``; scores: float ``[N, K]``.
    thresholds: ``[K]`` (e.g. :func:`tune_thresholds` on the validation split).
    class_names: the ``K`` label names.

  Returns:
    ``{'num_examples', 'mAP', 'macro_f1', 'micro_f1', 'micro_precision', 'micro_recall',
    'exact_match' (the fraction of examples whose predicted label set is exactly right),
    'per_label': {name: {'AP' (None without positives), 'threshold', 'precision', 'recall',
    'f1', 'support'}}}``.
  """
  labels, scores = _check(labels, scores)
  thresholds = np.asarray(thresholds, np.float64)
  names = list(class_names)
  if thresholds.shape != (labels.shape[1],) or len(names) != labels.shape[1]:
    raise ValueError(f"expected {labels.shape[1]} thresholds and class names (one per label); "
                     f"found {thresholds.shape} and {len(names)}")
  ap = average_precision(labels, scores)
  predictions = scores >= thresholds
  prf = precision_recall_f1(labels, predictions)
  tp, fp, fn = prf["tp"].sum(), prf["fp"].sum(), prf["fn"].sum()
  return {
      "num_examples": int(labels.shape[0]),
      "mAP": mean_average_precision(labels, scores),
      "macro_f1": float(prf["f1"].mean()),
      "micro_f1": float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0,
      "micro_precision": float(tp / (tp + fp)) if tp + fp else 0.0,
      "micro_recall": float(tp / (tp + fn)) if tp + fn else 0.0,
      "exact_match": float(np.mean(np.all(predictions == labels, axis=1))),
      "per_label": {name: {"AP": None if np.isnan(ap[k]) else float(ap[k]),
                           "threshold": float(thresholds[k]),
                           "precision": float(prf["precision"][k]),
                           "recall": float(prf["recall"][k]), "f1": float(prf["f1"][k]),
                           "support": int(prf["support"][k])}
                    for k, name in enumerate(names)},
  }
