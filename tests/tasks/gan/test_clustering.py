"""Pseudo-labels for self-conditioned GANs: k-means of features, id matching, purity."""

import numpy as np
import pytest

from jaxvision.tasks.gan import clustering


def _blobs(num_clusters=6, per_cluster=50, dims=40, seed=0):
  """Well-separated Gaussian blobs: features [K * n, dims] and their true cluster [K * n]."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(0, 10, (num_clusters, dims))
  truth = np.repeat(np.arange(num_clusters), per_cluster)
  return centres[truth] + rng.normal(0, 0.5, (len(truth), dims)), truth


@pytest.mark.parametrize("pca_dims", [0, 8, 128])
def test_kmeans_recovers_separated_blobs(pca_dims):
  features, truth = _blobs()
  ids = clustering.cluster_features(features, 6, pca_dims=pca_dims, seed=3)
  assert ids.dtype == np.int32 and ids.shape == truth.shape
  assert clustering.purity(ids, truth) == 1.0
  # A bijection between found and true clusters: each true cluster is exactly one found id.
  assert len(set(zip(ids.tolist(), truth.tolist()))) == 6
  # Deterministic for a seed.
  np.testing.assert_array_equal(ids, clustering.cluster_features(features, 6, pca_dims=pca_dims,
                                                                 seed=3))


def test_match_clusters_undoes_a_renumbering_and_keeps_the_partition():
  rng = np.random.default_rng(0)
  previous = rng.integers(0, 7, 500).astype(np.int32)
  permutation = rng.permutation(7)
  np.testing.assert_array_equal(clustering.match_clusters(previous, permutation[previous], 7),
                                previous)
  # A perturbed partition: ids follow the majority overlap, and the partition is unchanged.
  current = permutation[previous]
  flipped = rng.random(500) < 0.2
  current[flipped] = rng.integers(0, 7, flipped.sum())
  matched = clustering.match_clusters(previous, current, 7)
  assert np.mean(matched == previous) >= 0.8
  for k in range(7):
    assert len(np.unique(matched[current == k])) <= 1


def test_purity_by_hand():
  ids = np.array([0, 0, 0, 1, 1, 2])
  labels = np.array([4, 4, 5, 6, 7, 9])
  # Majorities: cluster 0 -> 2 of 3, cluster 1 -> 1 of 2, cluster 2 -> 1 of 1.
  assert clustering.purity(ids, labels) == pytest.approx(4 / 6)


def test_bad_inputs_are_clear_errors():
  features, _ = _blobs(num_clusters=2, per_cluster=3)
  with pytest.raises(ValueError, match=r"shape \[N, F\]"):
    clustering.cluster_features(features[0], 2)
  with pytest.raises(ValueError, match="num_clusters <= N"):
    clustering.cluster_features(features, 7)
  with pytest.raises(ValueError, match="NaN or inf"):
    clustering.cluster_features(np.where(features > 5, np.nan, features), 2)
  with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
    clustering.match_clusters(np.array([0, 1, 3]), np.array([0, 1, 2]), 3)
  with pytest.raises(ValueError, match="same examples"):
    clustering.match_clusters(np.array([0, 1]), np.array([0, 1, 2]), 3)
  with pytest.raises(ValueError, match="same shape"):
    clustering.purity(np.array([0, 1]), np.array([0]))
