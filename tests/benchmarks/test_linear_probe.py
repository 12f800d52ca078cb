"""The linear probe's logistic regression against scikit-learn's on the same objective."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from benchmarks import linear_probe
from jaxvision.apps import store


def _blobs(n, dim=16, classes=4, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, dim))
  y = rng.integers(0, classes, n)
  return (centres[y] + 1.5 * rng.normal(size=(n, dim))).astype(np.float32), y


@pytest.mark.parametrize("l2", [1e-3, 1e-1])
def test_fit_matches_sklearn(l2):
  x, y = _blobs(600)
  x, = linear_probe.standardize(x)
  ours = linear_probe.fit_logistic(x, y, 4, l2=l2, tol=1e-6)
  # scikit-learn minimises C * sum CE + ||W||^2 / 2: the same minimiser when C = 1 / (l2 N).
  ref = LogisticRegression(C=1.0 / (l2 * len(y)), tol=1e-10, max_iter=10_000).fit(
      x.astype(np.float64), y)
  # Softmax weights are defined up to a shift shared by the classes; the penalty fixes it for w
  # (sum over classes is 0 at the optimum) and scikit-learn's bias is centred the same way.
  np.testing.assert_allclose(ours["w"], ref.coef_.T, atol=2e-3)
  np.testing.assert_allclose(ours["b"] - ours["b"].mean(), ref.intercept_ - ref.intercept_.mean(),
                             atol=2e-3)
  assert ours["grad_max"] < 1e-6 or ours["iterations"] == 1000


def test_probe_chooses_l2_on_the_hold_out_and_scores_the_test_split():
  x, y = _blobs(1200)
  train = store.from_arrays(x[:1000], labels=y[:1000], meta={"model": "m"})
  test = store.from_arrays(x[1000:], labels=y[1000:], meta={"model": "m"})
  out = linear_probe.probe(train, test, l2_grid=[1e-4, 10.0])
  assert [r["l2"] for r in out["l2_search"]] == [1e-4, 10.0]
  assert out["l2"] == max(out["l2_search"], key=lambda r: r["val_accuracy"])["l2"]
  xs, xt = linear_probe.standardize(train.vectors, test.vectors)
  ref = LogisticRegression(C=1.0 / (out["l2"] * 1000), max_iter=10_000).fit(xs, train.labels)
  assert abs(out["test_accuracy"] - ref.score(xt, test.labels)) <= 2 / 200


def test_probe_refuses_stores_of_different_models():
  x, y = _blobs(100)
  a = store.from_arrays(x, labels=y, meta={"model": "a"})
  b = store.from_arrays(x, labels=y, meta={"model": "b"})
  with pytest.raises(ValueError, match="'a' embeddings of dim 16; the test store 'b'"):
    linear_probe.probe(a, b, l2_grid=[1e-3])
