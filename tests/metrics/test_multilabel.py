"""Multi-label metrics against scikit-learn (average precision, precision/recall/F1) and a
brute-force search over thresholds, on random and on tied scores."""

import numpy as np
import pytest
from sklearn import metrics as skm

from jaxvision.metrics import multilabel


def _data(seed, n=200, k=6, ties=False):
  rng = np.random.default_rng(seed)
  labels = (rng.random((n, k)) < rng.uniform(0.1, 0.6, k)).astype(np.int64)
  # Scores that carry some signal, as a model's would.
  scores = np.clip(0.35 * labels + rng.random((n, k)) * 0.8, 0, 1)
  if ties:
    scores = np.round(scores, 1)  # about 11 distinct values: many ties within each label
  labels[0] = 1  # every label has a positive
  return labels, scores.astype(np.float32)


@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_matches_sklearn(ties):
  labels, scores = _data(0, ties=ties)
  ours = multilabel.average_precision(labels, scores)
  ref = skm.average_precision_score(labels, scores.astype(np.float64), average=None)
  np.testing.assert_allclose(ours, ref, rtol=1e-12)
  np.testing.assert_allclose(multilabel.mean_average_precision(labels, scores),
                             skm.average_precision_score(labels, scores, average="macro"),
                             rtol=1e-12)


def test_average_precision_hand_computed_with_a_tie():
  # Scores 0.9 (pos), 0.5 (pos), 0.5 (neg), 0.1 (pos): P/R at the 3 thresholds are
  # (1, 1/3), (2/3, 2/3), (3/4, 1) -> AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/4.
  ap = multilabel.average_precision([[1], [1], [0], [1]], [[0.9], [0.5], [0.5], [0.1]])
  assert ap[0] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3, rel=1e-12)


def test_a_label_without_positives_has_no_ap_and_is_left_out_of_the_mean():
  labels, scores = _data(1, k=3)
  labels[:, 1] = 0
  ap = multilabel.average_precision(labels, scores)
  assert np.isnan(ap[1]) and not np.isnan(ap[[0, 2]]).any()
  assert multilabel.mean_average_precision(labels, scores) == pytest.approx(
      np.mean(skm.average_precision_score(labels[:, [0, 2]], scores[:, [0, 2]], average=None)))
  report = multilabel.multilabel_report(labels, scores, [0.5] * 3, ["a", "b", "c"])
  assert report["per_label"]["b"]["AP"] is None and report["per_label"]["b"]["support"] == 0


@pytest.mark.parametrize("ties", [False, True])
def test_precision_recall_f1_matches_sklearn(ties):
  labels, scores = _data(2, ties=ties)
  thresholds = np.linspace(0.3, 0.7, labels.shape[1])
  predictions = (scores >= thresholds).astype(int)
  ours = multilabel.precision_recall_f1(labels, predictions)
  p, r, f, s = skm.precision_recall_fscore_support(labels, predictions, average=None,
                                                   zero_division=0)
  for name, ref in (("precision", p), ("recall", r), ("f1", f), ("support", s)):
    np.testing.assert_allclose(ours[name], ref, rtol=1e-12, err_msg=name)
  report = multilabel.multilabel_report(labels, scores, thresholds, list("abcdef"))
  micro = skm.precision_recall_fscore_support(labels, predictions, average="micro",
                                              zero_division=0)
  assert report["micro_precision"] == pytest.approx(micro[0], rel=1e-12)
  assert report["micro_recall"] == pytest.approx(micro[1], rel=1e-12)
  assert report["micro_f1"] == pytest.approx(micro[2], rel=1e-12)
  assert report["macro_f1"] == pytest.approx(np.mean(f), rel=1e-12)
  assert report["exact_match"] == pytest.approx(skm.accuracy_score(labels, predictions))
  assert report["per_label"]["c"]["threshold"] == pytest.approx(thresholds[2])


@pytest.mark.parametrize("ties", [False, True])
def test_tuned_thresholds_reach_the_best_f1_of_any_threshold(ties):
  labels, scores = _data(3, ties=ties)
  thresholds, best = multilabel.tune_thresholds(labels, scores)
  for k in range(labels.shape[1]):
    # Brute force: every distinct score (and one above them all) as a threshold.
    candidates = np.r_[np.unique(scores[:, k]), 2.0]
    f1s = [skm.f1_score(labels[:, k], scores[:, k] >= t, zero_division=0) for t in candidates]
    assert best[k] == pytest.approx(max(f1s), rel=1e-12)
    reached = skm.f1_score(labels[:, k], scores[:, k] >= thresholds[k], zero_division=0)
    assert reached == pytest.approx(max(f1s), rel=1e-12)
    # Halfway between two distinct scores: no score equals the threshold (or it is the lowest).
    assert thresholds[k] not in scores[:, k] or thresholds[k] == scores[:, k].min()


def test_tuned_threshold_is_halfway_and_without_positives_predicts_nothing():
  # Label 0: positives 0.8 and 0.6, negatives 0.4 and 0.2 -> F1 1 at >= 0.6, threshold 0.5.
  labels = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
  scores = np.array([[0.8, 0.3], [0.6, 0.9], [0.4, 0.1], [0.2, 0.2]])
  thresholds, best = multilabel.tune_thresholds(labels, scores)
  assert thresholds[0] == pytest.approx(0.5) and best[0] == 1.0
  assert thresholds[1] > 0.9 and best[1] == 0.0
  assert not np.any(scores[:, 1] >= thresholds[1])


def test_bad_input_is_named():
  with pytest.raises(ValueError, match=r"labels and scores \[N, K\] of one shape; found "
                                       r"\(2, 3\) and \(2, 2\)"):
    multilabel.average_precision(np.zeros((2, 3)), np.zeros((2, 2)))
  with pytest.raises(ValueError, match="finite"):
    multilabel.tune_thresholds(np.ones((2, 1)), np.array([[np.nan], [0.1]]))
  with pytest.raises(ValueError, match="expected 2 thresholds and class names"):
    multilabel.multilabel_report(np.ones((2, 2)), np.ones((2, 2)), [0.5], ["a", "b"])
