"""Confusion matrix and per-class report against scikit-learn."""

import numpy as np
import jax
import jax.numpy as jnp
from sklearn import metrics as skm

from jaxvision.metrics import classification_report, confusion_matrix


def test_confusion_matrix_and_report_match_sklearn():
  rng = np.random.default_rng(0)
  k = 6
  labels = rng.integers(0, k, 500)
  preds = np.where(rng.random(500) < 0.6, labels, rng.integers(0, k, 500))
  preds[preds == 5] = 4  # class 5 is never predicted: zero-division precision
  mask = rng.random(500) < 0.8
  cm = jax.jit(confusion_matrix, static_argnums=2)(jnp.asarray(labels), jnp.asarray(preds), k,
                                                    jnp.asarray(mask))
  expected = skm.confusion_matrix(labels[mask], preds[mask], labels=range(k))
  np.testing.assert_array_equal(np.asarray(cm), expected)
  report = classification_report(cm, [f"c{i}" for i in range(k)])
  p, r, f, s = skm.precision_recall_fscore_support(labels[mask], preds[mask], labels=range(k),
                                                   zero_division=0)
  assert report["num_examples"] == mask.sum()
  np.testing.assert_allclose(report["accuracy"], skm.accuracy_score(labels[mask], preds[mask]))
  for i in range(k):
    row = report["per_class"][f"c{i}"]
    np.testing.assert_allclose([row["precision"], row["recall"], row["f1"]], [p[i], r[i], f[i]],
                               rtol=1e-12)
    assert row["support"] == s[i]
  np.testing.assert_allclose(report["macro_f1"], skm.f1_score(
      labels[mask], preds[mask], labels=range(k), average="macro", zero_division=0))
