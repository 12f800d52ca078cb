"""Balanced sampler tests: counts, static shapes, candidates only, randomness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import ops

N = 40


def masks(num_pos, num_neg):
  pos = np.zeros(N, bool)
  neg = np.zeros(N, bool)
  rng = np.random.default_rng(num_pos * 100 + num_neg)
  perm = rng.permutation(N)
  pos[perm[:num_pos]] = True
  neg[perm[num_pos:num_pos + num_neg]] = True
  return pos, neg


sample = jax.jit(lambda rng, p, n: ops.sample_balanced(rng, p, n, num_samples=16,
                                                        positive_fraction=0.25))


@pytest.mark.parametrize("num_pos,num_neg,want_pos,want_neg", [
    (10, 25, 4, 12),  # plenty of both: floor(16 * 0.25) = 4 positives
    (2, 25, 2, 14),  # few positives: negatives fill up
    (10, 5, 4, 5),  # few negatives: fewer samples in total
    (0, 0, 0, 0),
])
def test_exact_counts_and_candidates_only(num_pos, num_neg, want_pos, want_neg):
  pos, neg = masks(num_pos, num_neg)
  out = sample(jax.random.key(0), pos, neg)
  assert out.indices.shape == (16,) and out.positive.shape == (N,)
  assert int(out.positive.sum()) == want_pos == int(out.num_positive)
  assert int(out.negative.sum()) == want_neg
  assert int(out.num_sampled) == want_pos + want_neg
  assert not (np.asarray(out.positive) & ~pos).any()
  assert not (np.asarray(out.negative) & ~neg).any()
  idx = np.asarray(out.indices)
  k = want_pos + want_neg
  assert (idx[k:] == -1).all() and len(set(idx[:k])) == k
  assert pos[idx[:want_pos]].all() and neg[idx[want_pos:k]].all()


def test_different_keys_give_different_samples_and_overlap_counts_positive():
  pos, neg = masks(20, 20)
  draws = {tuple(np.flatnonzero(sample(jax.random.key(s), pos, neg).negative))
           for s in range(5)}
  assert len(draws) > 1
  same = sample(jax.random.key(3), pos, neg)
  again = sample(jax.random.key(3), pos, neg)
  np.testing.assert_array_equal(same.indices, again.indices)
  both = ops.sample_balanced(jax.random.key(0), pos, pos | neg, num_samples=40,
                             positive_fraction=1.0)
  assert int(both.num_positive) == 20 and int(both.negative.sum()) == 20
  assert not (np.asarray(both.negative) & pos).any()


def test_vmap_over_batch_and_bad_args():
  pos = jnp.stack([jnp.asarray(masks(10, 20)[0]), jnp.asarray(masks(1, 20)[0])])
  neg = jnp.stack([jnp.asarray(masks(10, 20)[1]), jnp.asarray(masks(1, 20)[1])])
  out = jax.vmap(sample)(jax.random.split(jax.random.key(0), 2), pos, neg)
  np.testing.assert_array_equal(out.num_positive, [4, 1])
  np.testing.assert_array_equal(out.num_sampled, [16, 16])
  with pytest.raises(ValueError, match="positive_fraction"):
    ops.sample_balanced(jax.random.key(0), pos[0], neg[0], num_samples=4, positive_fraction=2.0)
  with pytest.raises(ValueError, match="same shape"):
    ops.sample_balanced(jax.random.key(0), pos[0], neg[0, :3], num_samples=4,
                        positive_fraction=0.5)
