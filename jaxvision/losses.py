"""Losses.

Classification: softmax cross-entropy with label smoothing and a validity mask (padded examples
never count).

GAN losses take raw discriminator logits (any shape, usually ``[B]``; real and fake batches may
differ in size) and return a scalar float32 averaged over the batch. The non-saturating losses
use ``softplus`` (``-log(sigmoid(x)) = softplus(-x)``, ``-log(1 - sigmoid(x)) = softplus(x)``),
so logits of any magnitude give finite values and gradients. Pick a pair by name::

  d_loss_fn, g_loss_fn = get_gan_losses("hinge")
"""

from __future__ import annotations

from typing import Callable

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


def smooth_l1_loss(pred, target, *, beta: float = 1.0 / 9.0):
  """Elementwise smooth-L1 (Huber-like) loss, torchvision's definition.

  With ``x = |pred - target|``: ``0.5 * x**2 / beta`` where ``x < beta``, else
  ``x - 0.5 * beta``. ``beta=0`` is the plain L1 loss ``x``. ``beta=1/9`` is Faster R-CNN's
  choice for box deltas.

  Args:
    pred: float array, any shape.
    target: float array broadcastable against ``pred``.
    beta: non-negative Python float, the width of the quadratic region.

  Returns:
    float32 array of the broadcast shape (no reduction); finite gradients everywhere.
  """
  beta = float(beta)
  if beta < 0:
    raise ValueError(f"smooth_l1_loss needs beta >= 0; got beta={beta}.")
  x = jnp.abs(jnp.asarray(pred, jnp.float32) - jnp.asarray(target, jnp.float32))
  if beta == 0.0:
    return x
  return jnp.where(x < beta, 0.5 * jnp.square(x) / beta, x - 0.5 * beta)


# --- GAN losses -----------------------------------------------------------------------
DLossFn = Callable[[jax.Array, jax.Array], jax.Array]
GLossFn = Callable[[jax.Array], jax.Array]


def _as_float32(logits) -> jax.Array:
  """Logits as a float32 array (bfloat16 logits would lose precision in the means)."""
  return jnp.asarray(logits).astype(jnp.float32)


def non_saturating_d_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """Discriminator loss of the standard (Goodfellow et al. 2014) GAN.

  ``mean(softplus(-real)) + mean(softplus(fake))``, i.e. the binary cross-entropy with
  real images labelled 1 and generated images labelled 0.

  Args:
    real_logits: discriminator logits on real images, any shape (usually ``[B]``).
    fake_logits: discriminator logits on generated images, any shape (usually ``[B]``).

  Returns:
    Scalar float32 loss.
  """
  real_logits, fake_logits = _as_float32(real_logits), _as_float32(fake_logits)
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def non_saturating_g_loss(fake_logits: jax.Array) -> jax.Array:
  """Non-saturating generator loss: ``mean(softplus(-fake)) = mean(-log sigmoid(fake))``.

  Args:
    fake_logits: discriminator logits on generated images, any shape (usually ``[B]``).

  Returns:
    Scalar float32 loss.
  """
  return jnp.mean(jax.nn.softplus(-_as_float32(fake_logits)))


def hinge_d_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """Hinge discriminator loss (Lim & Ye 2017; Miyato et al. 2018).

  ``mean(relu(1 - real)) + mean(relu(1 + fake))``.

  Args:
    real_logits: discriminator logits on real images, any shape (usually ``[B]``).
    fake_logits: discriminator logits on generated images, any shape (usually ``[B]``).

  Returns:
    Scalar float32 loss.
  """
  real_logits, fake_logits = _as_float32(real_logits), _as_float32(fake_logits)
  return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def hinge_g_loss(fake_logits: jax.Array) -> jax.Array:
  """Hinge generator loss: ``-mean(fake)``.

  Args:
    fake_logits: discriminator logits on generated images, any shape (usually ``[B]``).

  Returns:
    Scalar float32 loss.
  """
  return -jnp.mean(_as_float32(fake_logits))


GAN_LOSSES: dict[str, tuple[DLossFn, GLossFn]] = {
    "non_saturating": (non_saturating_d_loss, non_saturating_g_loss),
    "hinge": (hinge_d_loss, hinge_g_loss),
}


def get_gan_losses(name: str) -> tuple[DLossFn, GLossFn]:
  """Returns ``(d_loss_fn, g_loss_fn)`` for a loss name.

  Args:
    name: one of ``GAN_LOSSES``: ``"non_saturating"`` or ``"hinge"`` (case-insensitive;
      ``-`` and ``_`` are interchangeable, so ``"non-saturating"`` works too).

  Returns:
    ``d_loss_fn(real_logits, fake_logits) -> scalar`` and ``g_loss_fn(fake_logits) -> scalar``.

  Raises:
    ValueError: ``name`` is not a known loss.
  """
  key = name.strip().lower().replace("-", "_") if isinstance(name, str) else None
  if key not in GAN_LOSSES:
    raise ValueError(f"unknown GAN loss {name!r}; expected one of {sorted(GAN_LOSSES)}")
  return GAN_LOSSES[key]
