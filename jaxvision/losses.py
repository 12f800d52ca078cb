"""Losses. All reduce with an optional validity mask so padded examples never count."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def softmax_cross_entropy(logits, labels, *, num_classes: int | None = None,
                          label_smoothing: float = 0.0, mask=None):
  """Mean softmax cross-entropy over valid examples.

  Args:
    logits: ``[B, K]`` float.
    labels: ``[B]`` int class ids in ``[0, K)``.
    num_classes: ``K``; defaults to ``logits.shape[-1]``.
    label_smoothing: ``eps``: targets become ``(1 - eps) * one_hot + eps / K``.
    mask: optional ``[B]`` bool; masked-out examples contribute nothing.

  Returns:
    ``(mean_loss, per_example_loss [B])``; the mean is over valid examples (0 if none).
  """
  num_classes = num_classes or logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  per_example = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
  if mask is None:
    return per_example.mean(), per_example
  mask = mask.astype(jnp.float32)
  per_example = per_example * mask
  return per_example.sum() / jnp.maximum(mask.sum(), 1.0), per_example
