"""Unsupervised pseudo-labels for self-conditioned GANs (Liu et al. 2020, "Diverse Image
Generation via Self-Conditioned GANs").

A self-conditioned GAN is a class-conditional GAN whose "classes" are k-means clusters of the
discriminator's features of the training images: no dataset label is used. Every few thousand
steps the features are re-clustered, and the new cluster ids are matched to the old ones so a
cluster keeps its id (and the generator its class embedding) across re-clusterings.

Host-side NumPy, scikit-learn and SciPy; nothing here is traced.

* :func:`cluster_features`: ``features [N, F] -> cluster ids int32 [N]`` (PCA, L2
  normalisation, k-means).
* :func:`match_clusters`: renumbers new cluster ids to agree best with the previous ones
  (Hungarian matching on the ``[K, K]`` co-occurrence counts).
* :func:`purity`: share of examples whose cluster's majority label is their own label (a
  diagnostic against the true labels; training never sees them).
"""

from __future__ import annotations

import numpy as np
from scipy import optimize
from sklearn import cluster, decomposition


def _check_ids(name: str, ids: np.ndarray, num_clusters: int) -> np.ndarray:
  ids = np.asarray(ids)
  if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"{name} must be integer cluster ids of shape [N]; found {ids.dtype} "
                     f"{ids.shape}")
  if ids.size and (ids.min() < 0 or ids.max() >= num_clusters):
    raise ValueError(f"{name} must lie in [0, {num_clusters}); found [{ids.min()}, "
                     f"{ids.max()}]")
  return ids


def cluster_features(features: np.ndarray, num_clusters: int, *, pca_dims: int = 128,
                     seed: int = 0, n_init: int = 3) -> np.ndarray:
  """k-means cluster ids of ``features``.

  The features are centred and projected on their first ``pca_dims`` principal components
  (fewer when ``F`` or ``N`` is smaller), scaled to unit L2 norm, and clustered by k-means
  (k-means++ initialisation, ``n_init`` restarts, deterministic for a given ``seed``).

  Args:
    features: float ``[N, F]`` with ``N >= num_clusters``, all finite.
    num_clusters: ``K >= 2``.
    pca_dims: number of principal components kept (0 keeps the raw features).
    seed: seed of PCA's randomized solver and of k-means.
    n_init: k-means restarts; the lowest-inertia result is kept.

  Returns:
    int32 ``[N]`` cluster ids in ``[0, K)``.
  """
  features = np.asarray(features, np.float32)
  if features.ndim != 2:
    raise ValueError(f"features must have shape [N, F]; found {features.shape}")
  if num_clusters < 2 or features.shape[0] < num_clusters:
    raise ValueError(f"need 2 <= num_clusters <= N; found num_clusters={num_clusters} for "
                     f"{features.shape[0]} examples")
  if not np.all(np.isfinite(features)):
    raise ValueError("features contain NaN or inf: the discriminator has diverged")
  dims = min(pca_dims, *features.shape)
  if pca_dims > 0 and dims < features.shape[1]:
    features = decomposition.PCA(dims, random_state=seed).fit_transform(features)
  norms = np.linalg.norm(features, axis=1, keepdims=True)
  features = features / np.maximum(norms, 1e-12)
  kmeans = cluster.KMeans(num_clusters, n_init=n_init, random_state=seed)
  return kmeans.fit_predict(features).astype(np.int32)


def match_clusters(previous: np.ndarray, current: np.ndarray, num_clusters: int) -> np.ndarray:
  """Renumbers ``current`` so that as many examples as possible keep their ``previous`` id.

  Finds the permutation ``pi`` of ``[0, K)`` maximising ``sum_i [pi(current_i) ==
  previous_i]`` (Hungarian algorithm on the co-occurrence counts) and returns
  ``pi(current)``. The partition is unchanged; only the ids move.

  Args:
    previous, current: int ``[N]`` cluster ids in ``[0, K)`` of the same examples.
    num_clusters: ``K``.

  Returns:
    int32 ``[N]``.
  """
  previous = _check_ids("previous", previous, num_clusters)
  current = _check_ids("current", current, num_clusters)
  if previous.shape != current.shape:
    raise ValueError(f"previous and current ids must label the same examples; found shapes "
                     f"{previous.shape} and {current.shape}")
  counts = np.zeros((num_clusters, num_clusters), np.int64)  # [current id, previous id]
  np.add.at(counts, (current, previous), 1)
  rows, cols = optimize.linear_sum_assignment(counts, maximize=True)
  mapping = np.empty(num_clusters, np.int32)
  mapping[rows] = cols
  return mapping[current]


def purity(ids: np.ndarray, labels: np.ndarray) -> float:
  """Share of examples that carry their cluster's most frequent label (1.0: pure clusters)."""
  ids, labels = np.asarray(ids), np.asarray(labels)
  if ids.shape != labels.shape or ids.ndim != 1 or ids.size == 0:
    raise ValueError(f"ids and labels must be non-empty [N] arrays of the same shape; found "
                     f"{ids.shape} and {labels.shape}")
  majority = 0
  for k in np.unique(ids):
    majority += np.bincount(labels[ids == k]).max()
  return float(majority / ids.size)
