"""Balanced positive/negative sampling with static shapes (torchvision
``BalancedPositiveNegativeSampler``).

From ``num_samples`` slots, up to ``floor(num_samples * positive_fraction)`` go to positives
and the rest to negatives, each chosen uniformly at random without replacement among its
candidates. If there are too few positives, negatives fill the remaining slots; if both run
short fewer than ``num_samples`` are drawn (the count is returned).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

Array = jnp.ndarray


class Samples(NamedTuple):
  """Result of :func:`sample_balanced`.

  Attributes:
    positive: ``[N]`` bool, the sampled positives.
    negative: ``[N]`` bool, the sampled negatives.
    indices: ``[num_samples]`` int32, sampled positives (random order) then sampled negatives,
      padded with -1.
    num_positive: int32 scalar.
    num_sampled: int32 scalar, positives plus negatives (valid entries of ``indices``).
  """
  positive: Array
  negative: Array
  indices: Array
  num_positive: Array
  num_sampled: Array


def _random_pick(priority: Array, candidates: Array, k: int, take: Array) -> Array:
  """Indices [k] of the ``take`` candidates with the highest random priority, -1 padded."""
  _, idx = lax.top_k(jnp.where(candidates, priority, -1.0), k)  # [k]
  return jnp.where(jnp.arange(k) < take, idx, -1).astype(jnp.int32)


def sample_balanced(rng: Array, positive: Array, negative: Array, *, num_samples: int,
                    positive_fraction: float) -> Samples:
  """Draws a balanced sample of positives and negatives.

  Args:
    rng: PRNG key.
    positive: ``[N]`` bool, positive candidates (e.g. ``matches >= 0``).
    negative: ``[N]`` bool, negative candidates (e.g. ``matches == BELOW_LOW_THRESHOLD``).
      Entries that are also positive count as positive only.
    num_samples: static total number of samples (e.g. 256 for the RPN, 512 for the box head).
    positive_fraction: at most ``floor(num_samples * positive_fraction)`` positives.

  Returns:
    :class:`Samples` with ``[N]`` masks, ``[num_samples]`` padded indices and counts.
  """
  positive, negative = jnp.asarray(positive, bool), jnp.asarray(negative, bool)
  if positive.ndim != 1 or positive.shape != negative.shape:
    raise ValueError(f"positive and negative must be [N] masks of the same shape; got "
                     f"{tuple(positive.shape)} and {tuple(negative.shape)}.")
  if not 0.0 <= positive_fraction <= 1.0:
    raise ValueError(f"positive_fraction must be in [0, 1]; got {positive_fraction}.")
  if not isinstance(num_samples, int) or num_samples < 0:
    raise ValueError(f"num_samples must be a non-negative int; got {num_samples!r}.")
  n = positive.shape[0]
  negative = negative & ~positive
  max_pos = min(int(num_samples * positive_fraction), n)
  max_neg = min(num_samples, n)
  num_pos = jnp.minimum(positive.sum(dtype=jnp.int32), max_pos)
  num_neg = jnp.minimum(negative.sum(dtype=jnp.int32), num_samples - num_pos)
  priority = jax.random.uniform(rng, (n,))  # [N] in [0, 1): random order among candidates
  pos_idx = _random_pick(priority, positive, max_pos, num_pos)  # [max_pos]
  neg_idx = _random_pick(priority, negative, max_neg, num_neg)  # [max_neg]
  # Padding -1 would wrap to the last element: send it out of bounds (n) and drop it.
  pos_mask = jnp.zeros((n,), bool).at[jnp.where(pos_idx < 0, n, pos_idx)].set(True, mode="drop")
  neg_mask = jnp.zeros((n,), bool).at[jnp.where(neg_idx < 0, n, neg_idx)].set(True, mode="drop")
  # Compact positives then negatives into num_samples slots (stable sort puts -1 pads last).
  both = jnp.concatenate([pos_idx, neg_idx])
  order = jnp.argsort(both < 0, stable=True)
  indices = jnp.full((num_samples,), -1, jnp.int32)
  take = min(num_samples, both.shape[0])
  indices = indices.at[:take].set(both[order][:take])
  return Samples(pos_mask, neg_mask, indices, num_pos, num_pos + num_neg)
