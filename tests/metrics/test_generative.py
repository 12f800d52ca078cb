"""Generative metrics against independent float64 NumPy references written here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.metrics import generative


def ref_frechet(feats_a, feats_b):
  """FD via the symmetric form Tr sqrt(sqrt(S1) S2 sqrt(S1)) and eigendecompositions only."""
  a = np.asarray(feats_a, np.float64)
  b = np.asarray(feats_b, np.float64)
  mu_a, mu_b = a.mean(0), b.mean(0)
  ca, cb = a - mu_a, b - mu_b
  s1 = ca.T @ ca / (len(a) - 1)
  s2 = cb.T @ cb / (len(b) - 1)
  w, v = np.linalg.eigh(s1)
  sqrt_s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  m = sqrt_s1 @ s2 @ sqrt_s1
  tr_covmean = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)))
  return np.sum((mu_a - mu_b) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean


def ref_score(probs):
  """exp(I(x; y)) = exp(H(mean p) - mean H(p)), the mutual-information form of the score."""
  p = np.asarray(probs, np.float64)
  entropy = lambda q: -np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1)), 0), axis=-1)
  return np.exp(entropy(p.mean(0)) - entropy(p).mean())


@pytest.fixture
def features():
  rng = np.random.default_rng(0)
  mix = rng.normal(size=(12, 12))
  a = rng.normal(size=(400, 12)) @ mix
  b = rng.normal(size=(300, 12)) @ (mix + 0.3 * rng.normal(size=(12, 12))) + 0.5
  return a, b


def test_frechet_matches_reference(features):
  a, b = features
  fd = generative.frechet_classifier_distance(a, b)
  np.testing.assert_allclose(fd, ref_frechet(a, b), rtol=1e-6)
  assert fd > 1.0  # the sets really differ


def test_frechet_symmetric_and_zero_for_identical_sets(features):
  a, b = features
  np.testing.assert_allclose(generative.frechet_classifier_distance(a, b),
                             generative.frechet_classifier_distance(b, a), rtol=1e-9)
  assert abs(generative.frechet_classifier_distance(a, a)) < 1e-6


def test_frechet_of_known_gaussians():
  # Diagonal covariances: FD = |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
  s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  expected = 1 + 4 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
  np.testing.assert_allclose(generative.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)),
                             expected, rtol=1e-12)


def test_frechet_with_singular_covariances():
  # Fewer samples than dimensions: both covariances are rank-deficient.
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(20, 32)), 1.5 * rng.normal(size=(25, 32)) + 0.1
  fd = generative.frechet_classifier_distance(a, b)
  np.testing.assert_allclose(fd, ref_frechet(a, b), rtol=1e-6)


def test_frechet_rejects_bad_input():
  with pytest.raises(ValueError, match="feature dimensions differ"):
    generative.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match=r"sigma \[D, D\]"):
    generative.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match="positive semi-definite"):
    generative.frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match="N >= 2"):
    generative.gaussian_stats(np.zeros((1, 4)))


def test_gaussian_stats_match_numpy(features):
  a, _ = features
  mu, sigma = generative.gaussian_stats(a.astype(np.float32))
  assert mu.dtype == np.float64 and sigma.shape == (12, 12)
  np.testing.assert_allclose(mu, a.astype(np.float32).astype(np.float64).mean(0), rtol=1e-12)
  centered = a.astype(np.float32).astype(np.float64) - mu
  np.testing.assert_allclose(sigma, centered.T @ centered / (len(a) - 1), rtol=1e-10)


def test_classifier_score_extremes():
  num_classes = 7
  confident_uniform = np.eye(num_classes)[np.arange(70) % num_classes]
  np.testing.assert_allclose(generative.classifier_score(confident_uniform), num_classes,
                             rtol=1e-12)
  single_class = np.tile(np.array([[0.1, 0.6, 0.3]]), (10, 1))
  np.testing.assert_allclose(generative.classifier_score(single_class), 1.0, rtol=1e-12)
  all_one_class = np.eye(5)[np.zeros(9, int)]
  np.testing.assert_allclose(generative.classifier_score(all_one_class), 1.0, rtol=1e-12)


def test_classifier_score_matches_mutual_information_form():
  rng = np.random.default_rng(2)
  logits = 3 * rng.normal(size=(100, 10))
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  np.testing.assert_allclose(generative.classifier_score(probs), ref_score(probs), rtol=1e-10)
  # Splits: consecutive parts of 10, each scored with its own marginal.
  per_split = [ref_score(probs[i:i + 10]) for i in range(0, 100, 10)]
  np.testing.assert_allclose(generative.classifier_score(probs, splits=10), np.mean(per_split),
                             rtol=1e-10)
  mean, std = generative.classifier_score_stats(probs, splits=10)
  np.testing.assert_allclose([mean, std], [np.mean(per_split), np.std(per_split)], rtol=1e-10)


def test_classifier_score_rejects_bad_input():
  with pytest.raises(ValueError, match="sum to 1"):
    generative.classifier_score(np.array([[2.0, 3.0]]))
  with pytest.raises(ValueError, match="non-negative"):
    generative.classifier_score(np.array([[1.5, -0.5]]))
  with pytest.raises(ValueError, match=r"\[N, K\]"):
    generative.classifier_score(np.ones(3) / 3)
  with pytest.raises(ValueError, match="splits"):
    generative.classifier_score(np.eye(3), splits=4)


def test_conditional_accuracy():
  logits = np.array([[5.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 3.0, 0.0], [1.0, 0.0, 4.0],
                     [0.0, 0.0, 1.0]])
  requested = np.array([0, 1, 2, 2, 2])  # predictions: 0, 1, 1, 2, 2
  assert generative.conditional_accuracy(logits, requested) == pytest.approx(4 / 5)
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  assert generative.conditional_accuracy(probs, requested) == pytest.approx(4 / 5)
  np.testing.assert_allclose(generative.per_class_accuracy(logits, requested), [1, 1, 2 / 3])
  per_class = generative.per_class_accuracy(logits[:2], np.array([0, 0]))
  np.testing.assert_array_equal(per_class, [0.5, np.nan, np.nan])


def test_conditional_accuracy_rejects_bad_labels():
  with pytest.raises(ValueError, match=r"\[0, 3\)"):
    generative.conditional_accuracy(np.eye(3), np.array([0, 1, 3]))
  with pytest.raises(ValueError, match="shape"):
    generative.conditional_accuracy(np.eye(3), np.array([0, 1]))
  with pytest.raises(ValueError, match="integer"):
    generative.conditional_accuracy(np.eye(3), np.array([0.0, 1.0, 2.0]))


def _linear_classifier(variables, x, *, train):
  assert not train
  flat = x.reshape(x.shape[0], -1)
  hidden = jnp.tanh(flat @ variables["params"]["w1"])
  return hidden @ variables["params"]["w2"], {"pre_logits": hidden}


def test_classifier_features_batches_and_pads():
  rng = np.random.default_rng(3)
  images = rng.normal(size=(11, 4, 4, 1)).astype(np.float32)
  variables = {"params": {"w1": rng.normal(size=(16, 6)).astype(np.float32),
                          "w2": rng.normal(size=(6, 3)).astype(np.float32)}}
  probs, pre_logits = generative.classifier_features(_linear_classifier, variables, images,
                                                     batch_size=4)
  hidden = np.tanh(images.reshape(11, -1).astype(np.float64) @ variables["params"]["w1"])
  logits = hidden @ variables["params"]["w2"]
  expected = np.exp(logits - logits.max(1, keepdims=True))
  expected /= expected.sum(1, keepdims=True)
  assert probs.shape == (11, 3) and pre_logits.shape == (11, 6)
  assert probs.dtype == np.float32 and pre_logits.dtype == np.float32
  np.testing.assert_allclose(pre_logits, hidden, atol=1e-5)
  np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_classifier_features_requires_pre_logits():
  def bad_apply(variables, x, *, train):
    return x.reshape(x.shape[0], -1), {"features": x}

  with pytest.raises(ValueError, match="pre_logits"):
    generative.classifier_features(bad_apply, {}, np.zeros((2, 3)), batch_size=2)


def test_classifier_features_with_flax_model():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Tiny(nn.Module):

    @nn.compact
    def __call__(self, x, *, train):
      h = nn.relu(nn.Dense(5)(x.reshape(x.shape[0], -1)))
      return nn.Dense(4)(h), {"pre_logits": h}

  model = Tiny()
  images = np.random.default_rng(4).normal(size=(7, 3, 3, 1)).astype(np.float32)
  variables = model.init(jax.random.key(0), images[:1], train=False)
  probs, pre_logits = generative.classifier_features(model.apply, variables, images,
                                                     batch_size=3)
  logits, aux = model.apply(variables, images, train=False)
  np.testing.assert_allclose(probs, jax.nn.softmax(logits), atol=1e-6)
  np.testing.assert_allclose(pre_logits, aux["pre_logits"], atol=1e-6)
