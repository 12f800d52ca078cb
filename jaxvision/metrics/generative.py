"""Sample-quality metrics for generative models, computed from a classifier's outputs.

These are the Inception Score / FID recipes with a task classifier (e.g. a trained jaxvision
MNIST classifier) in place of Inception-v3, so their values are comparable only between runs
that use the same classifier:

* :func:`classifier_score`: ``exp(E_x[KL(p(y|x) || p(y))])`` from class probabilities.
* :func:`frechet_classifier_distance`: the Frechet distance between Gaussians fitted to the
  classifier's penultimate features (``pre_logits``) of two image sets;
  :func:`gaussian_stats` and :func:`frechet_distance` are its two halves, so reference
  statistics can be computed once and reused.
* :func:`conditional_accuracy` / :func:`per_class_accuracy`: how often a class-conditional
  generator's samples are classified as the class that was requested.

:func:`classifier_features` runs a classifier over images in jitted batches and returns
``(probs, pre_logits)`` as NumPy arrays. Everything else runs on the host in float64.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp

import numpy as np
import scipy.linalg
import scipy.special

# Rows of `probs` must sum to 1 within this tolerance (float32 softmax is good to ~1e-6).
PROB_SUM_TOLERANCE = 1e-3
# Diagonal offset added to both covariances when sqrtm(S1 S2) is not finite.
FRECHET_EPS = 1e-6
# Largest imaginary part of sqrtm(S1 S2), relative to its largest real entry, that is
# discarded as round-off; larger ones mean the covariances are not valid (not PSD).
FRECHET_IMAG_TOLERANCE = 1e-3


def _check_probs(probs) -> np.ndarray:
  """Validates ``[N, K]`` probabilities; returns them as float64 with rows renormalised."""
  probs = np.asarray(probs, dtype=np.float64)
  if probs.ndim != 2 or probs.shape[0] < 1 or probs.shape[1] < 1:
    raise ValueError(f"probs must have shape [N, K] with N, K >= 1, got {probs.shape}")
  if not np.all(np.isfinite(probs)) or np.any(probs < 0):
    raise ValueError("probs must be finite and non-negative (pass softmax probabilities, "
                     "not logits)")
  sums = probs.sum(axis=1)
  worst = np.max(np.abs(sums - 1.0))
  if worst > PROB_SUM_TOLERANCE:
    raise ValueError(f"each row of probs must sum to 1; found a row summing to "
                     f"{sums[np.argmax(np.abs(sums - 1.0))]:.6g} (pass softmax probabilities)")
  return probs / sums[:, None]


def _kl_score(probs: np.ndarray) -> float:
  """``exp(mean_x KL(p(y|x) || mean_x p(y|x)))`` for float64 ``[N, K]`` probabilities."""
  marginal = probs.mean(axis=0, keepdims=True)  # [1, K]
  # xlogy gives 0 * log(0) = 0; marginal > 0 wherever probs > 0.
  kl = np.sum(scipy.special.xlogy(probs, probs) - scipy.special.xlogy(probs, marginal), axis=1)
  return float(np.exp(np.mean(kl)))


def classifier_split_scores(probs, splits: int) -> np.ndarray:
  """Classifier scores of ``splits`` consecutive, near-equal parts of ``probs``.

  Args:
    probs: class probabilities ``[N, K]`` (rows sum to 1).
    splits: number of parts, ``1 <= splits <= N``; part sizes differ by at most one.

  Returns:
    ``[splits]`` float64 scores, each computed with its own part's marginal ``p(y)``.
  """
  probs = _check_probs(probs)
  if not isinstance(splits, (int, np.integer)) or not 1 <= splits <= probs.shape[0]:
    raise ValueError(f"splits must be an int in [1, N={probs.shape[0]}], got {splits!r}")
  return np.array([_kl_score(part) for part in np.array_split(probs, splits)])


def classifier_score(probs, *, splits: int = 1) -> float:
  """The Inception-Score analogue ``exp(E_x[KL(p(y|x) || p(y))])`` of a set of samples.

  ``p(y)`` is the mean of ``p(y|x)`` over the samples. The score lies in ``[1, K]``: it is
  ``K`` when every sample is classified with certainty and the classes are used equally, and
  1 when all samples get the same prediction.

  By default (``splits=1``) this reports the score of the whole set, which has the least
  bias. The Inception Score convention (Salimans et al. 2016) is ``splits=10`` and the mean
  over the splits, reported with the std from :func:`classifier_score_stats`; each split
  estimates ``p(y)`` from fewer samples, which biases the score slightly downwards.

  Args:
    probs: class probabilities ``[N, K]`` (rows sum to 1 within ``PROB_SUM_TOLERANCE``).
    splits: number of consecutive parts to score separately; the mean is returned.

  Returns:
    The score (mean over splits) as a Python float.
  """
  return float(np.mean(classifier_split_scores(probs, splits)))


def classifier_score_stats(probs, *, splits: int = 10) -> tuple[float, float]:
  """``(mean, std)`` of the classifier score over ``splits`` parts (Inception Score style).

  The std is the population std (``ddof=0``) of the split scores, as in the original
  Inception Score code.
  """
  scores = classifier_split_scores(probs, splits)
  return float(np.mean(scores)), float(np.std(scores))


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance of features, for :func:`frechet_distance`.

  Args:
    features: ``[N, D]`` array, ``N >= 2``.

  Returns:
    ``(mu [D], sigma [D, D])`` in float64; ``sigma`` is the unbiased (``N - 1``) covariance.
  """
  features = np.asarray(features, dtype=np.float64)
  if features.ndim != 2 or features.shape[0] < 2 or features.shape[1] < 1:
    raise ValueError(f"features must have shape [N, D] with N >= 2, got {features.shape}")
  if not np.all(np.isfinite(features)):
    raise ValueError("features contain NaN or infinite values")
  mu = features.mean(axis=0)
  sigma = np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])
  return mu, sigma


def _check_gaussian(name: str, mu, sigma) -> tuple[np.ndarray, np.ndarray]:
  mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
  sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f"{name}: expected mu [D] and sigma [D, D], got {mu.shape} and "
                     f"{sigma.shape}")
  if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
    raise ValueError(f"{name}: mu and sigma must be finite")
  return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = FRECHET_EPS) -> float:
  """Frechet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

  ``||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2))``, in float64. When
  ``sqrtm(sigma1 sigma2)`` is not finite (near-singular product), it is recomputed with
  ``eps * I`` added to both covariances. Imaginary parts of the square root that are round-off
  (at most ``FRECHET_IMAG_TOLERANCE`` times its largest real entry) are dropped.

  Args:
    mu1, mu2: means ``[D]``.
    sigma1, sigma2: covariances ``[D, D]`` (symmetric positive semi-definite).
    eps: diagonal offset for the fallback.

  Returns:
    The distance as a Python float (>= 0 up to round-off).

  Raises:
    ValueError: mismatched shapes, non-finite inputs, or a square root with a large
      imaginary part (covariances that are not positive semi-definite).
  """
  mu1, sigma1 = _check_gaussian("first Gaussian", mu1, sigma1)
  mu2, sigma2 = _check_gaussian("second Gaussian", mu2, sigma2)
  if mu1.shape != mu2.shape:
    raise ValueError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
  with warnings.catch_warnings():  # a singular product is handled just below
    warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.all(np.isfinite(covmean)):
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    scale = max(float(np.max(np.abs(covmean.real))), np.finfo(np.float64).tiny)
    imag = float(np.max(np.abs(covmean.imag)))
    if imag > FRECHET_IMAG_TOLERANCE * scale:
      raise ValueError(f"sqrtm(sigma1 @ sigma2) has imaginary part {imag:.3g} (relative "
                       f"{imag / scale:.3g}); are both covariances positive semi-definite?")
    covmean = covmean.real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_classifier_distance(feats_a, feats_b, *, eps: float = FRECHET_EPS) -> float:
  """Frechet distance between Gaussians fitted to two feature sets (FID with our classifier).

  Args:
    feats_a: ``[N_a, D]`` features (e.g. the classifier's ``pre_logits`` on real images).
    feats_b: ``[N_b, D]`` features of the other set (e.g. generated images).
    eps: see :func:`frechet_distance`.

  Returns:
    The distance as a Python float.
  """
  return frechet_distance(*gaussian_stats(feats_a), *gaussian_stats(feats_b), eps=eps)


def _predicted_and_requested(probs_or_logits, requested_labels) -> tuple[np.ndarray, np.ndarray,
                                                                         int]:
  scores = np.asarray(probs_or_logits)
  labels = np.asarray(requested_labels)
  if scores.ndim != 2 or scores.shape[0] < 1:
    raise ValueError(f"probs_or_logits must have shape [N, K] with N >= 1, got {scores.shape}")
  if labels.shape != (scores.shape[0],):
    raise ValueError(f"requested_labels must have shape [N] = [{scores.shape[0]}], got "
                     f"{labels.shape}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"requested_labels must be integer class ids, got dtype {labels.dtype}")
  num_classes = scores.shape[1]
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"requested_labels must lie in [0, {num_classes}), found values in "
                     f"[{labels.min()}, {labels.max()}]")
  return np.argmax(scores, axis=1), labels, num_classes


def conditional_accuracy(probs_or_logits, requested_labels) -> float:
  """Fraction of samples whose predicted class is the class that was requested.

  Args:
    probs_or_logits: classifier probabilities or logits ``[N, K]`` (only the argmax is used).
    requested_labels: the classes the generator was asked for, ``[N]`` ints in ``[0, K)``.

  Returns:
    Accuracy in ``[0, 1]`` as a Python float.
  """
  predicted, labels, _ = _predicted_and_requested(probs_or_logits, requested_labels)
  return float(np.mean(predicted == labels))


def per_class_accuracy(probs_or_logits, requested_labels) -> np.ndarray:
  """Conditional accuracy for each requested class.

  Args:
    probs_or_logits: classifier probabilities or logits ``[N, K]``.
    requested_labels: requested classes ``[N]`` ints in ``[0, K)``.

  Returns:
    ``[K]`` float64: for class ``k``, the fraction of samples requested as ``k`` that are
    classified as ``k``; NaN for classes that were never requested.
  """
  predicted, labels, num_classes = _predicted_and_requested(probs_or_logits, requested_labels)
  requested = np.bincount(labels, minlength=num_classes)
  correct = np.bincount(labels[predicted == labels], minlength=num_classes)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(requested > 0, correct / np.maximum(requested, 1), np.nan)


@functools.partial(jax.jit, static_argnums=0)
def _classifier_batch(apply_fn, variables, images):
  outputs = apply_fn(variables, images, train=False)
  if not (isinstance(outputs, (tuple, list)) and len(outputs) == 2
          and isinstance(outputs[1], dict) and "pre_logits" in outputs[1]):
    raise ValueError("apply_fn(variables, x, train=False) must return "
                     "(logits, {'pre_logits': features, ...}), got "
                     f"{jax.tree_util.tree_structure(outputs)}")
  logits, aux = outputs
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return probs, aux["pre_logits"].reshape(images.shape[0], -1).astype(jnp.float32)


def classifier_features(apply_fn: Callable[..., Any], variables: Any, images,
                        batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Runs a classifier over images in jitted batches and returns its outputs on the host.

  The last partial batch is padded to ``batch_size`` (and the padding dropped), so the
  classifier is compiled once per image shape and batch size. ``apply_fn`` is a static jit
  argument: pass the same function object (e.g. ``model.apply``) across calls to reuse the
  compilation.

  Args:
    apply_fn: ``apply_fn(variables, x, train=False) -> (logits [B, K], {'pre_logits': [B, D]})``,
      e.g. ``model.apply`` of a jaxvision classifier.
    variables: the classifier's variables (``{'params': ..., 'batch_stats': ...}``).
    images: ``[N, H, W, C]`` images, preprocessed as the classifier expects.
    batch_size: images per compiled call.

  Returns:
    ``(probs [N, K], pre_logits [N, D])`` NumPy float32 arrays; ``probs`` is the softmax of
    the logits.
  """
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  images = np.asarray(images)
  if images.ndim < 2 or images.shape[0] < 1:
    raise ValueError(f"images must have shape [N, ...] with N >= 1, got {images.shape}")
  num = images.shape[0]
  batch_size = min(batch_size, num)
  probs, features = [], []
  for start in range(0, num, batch_size):
    batch = images[start:start + batch_size]
    valid = batch.shape[0]
    if valid < batch_size:
      pad = np.zeros((batch_size - valid,) + batch.shape[1:], batch.dtype)
      batch = np.concatenate([batch, pad])
    batch_probs, batch_features = _classifier_batch(apply_fn, variables, batch)
    probs.append(np.asarray(batch_probs)[:valid])
    features.append(np.asarray(batch_features)[:valid])
  return np.concatenate(probs), np.concatenate(features)
