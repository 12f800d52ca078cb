"""Losses.

Classification: softmax cross-entropy with label smoothing and a validity mask (padded examples
never count). Multi-label (tagging): sigmoid binary cross-entropy over independent labels, with
the same mask.

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


def sigmoid_binary_cross_entropy(logits, targets, *, mask=None, label_smoothing: float = 0.0):
  """Mean sigmoid binary cross-entropy over valid examples, for multi-label outputs.

  Per label: ``-(t * log(sigmoid(x)) + (1 - t) * log(1 - sigmoid(x)))``, written with
  ``softplus`` (``t * softplus(-x) + (1 - t) * softplus(x)``) so that logits of any magnitude
  give finite values and gradients. An example's loss is the mean over its ``K`` labels.

  Args:
    logits: ``[B, K]`` float (one independent logit per label).
    targets: ``[B, K]`` in ``[0, 1]`` (multi-hot label sets; any numeric dtype).
    mask: optional ``[B]`` bool; masked-out examples contribute nothing.
    label_smoothing: ``eps`` in ``[0, 1)``: targets become ``t * (1 - eps) + eps / 2``.

  Returns:
    ``(mean_loss, per_example_loss [B])`` float32; the mean is over valid examples (0 if
    none), and masked-out examples have a per-example loss of 0.

  Raises:
    ValueError: logits and targets of different shapes, or not ``[B, K]``.
  """
  x = jnp.asarray(logits).astype(jnp.float32)
  t = jnp.asarray(targets).astype(jnp.float32)
  if x.ndim != 2 or x.shape != t.shape:
    raise ValueError(f"sigmoid_binary_cross_entropy needs logits and targets [B, K] of one "
                     f"shape; found {x.shape} and {t.shape}")
  if label_smoothing:
    t = t * (1.0 - label_smoothing) + 0.5 * label_smoothing
  per_example = jnp.mean(t * jax.nn.softplus(-x) + (1.0 - t) * jax.nn.softplus(x), axis=-1)
  if mask is None:
    return per_example.mean(), per_example
  mask = jnp.asarray(mask).astype(jnp.float32)
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


# --- Detection losses -------------------------------------------------------------------
# Elementwise: callers choose the normalisation. The detectors divide sums by
# max(1, number of positives over the batch), so images without boxes give finite losses.


def sigmoid_focal_loss(logits, targets, *, alpha: float | None = 0.25,
                       gamma: float = 2.0) -> jax.Array:
  """Elementwise sigmoid focal loss (Lin et al. 2017), float32.

  ``alpha_t * (1 - p_t) ** gamma * BCE(logits, targets)`` with ``p = sigmoid(logits)``,
  ``p_t = p * t + (1 - p) * (1 - t)`` and ``alpha_t = alpha * t + (1 - alpha) * (1 - t)``
  (no class weighting when ``alpha`` is None or negative). The cross-entropy is written with
  ``softplus`` (``-log p = softplus(-x)``, ``-log(1 - p) = softplus(x)``), so logits of any
  magnitude give finite values and gradients.

  Args:
    logits: any shape, float.
    targets: the same shape, in [0, 1] (one-hot class indicators, 0 for background).
    alpha: weight of the positive class, in [0, 1], or None.
    gamma: focusing exponent >= 0 (0 gives the plain binary cross-entropy).

  Returns:
    float32 array of the shape of ``logits``; not reduced: sum it and divide by
    ``max(1, num_positives)``.
  """
  x = jnp.asarray(logits).astype(jnp.float32)
  t = jnp.asarray(targets).astype(jnp.float32)
  if x.shape != t.shape:
    raise ValueError(f"sigmoid_focal_loss needs logits and targets of the same shape; found "
                     f"{x.shape} and {t.shape}")
  ce = t * jax.nn.softplus(-x) + (1.0 - t) * jax.nn.softplus(x)
  loss = ce
  if gamma:
    # 1 - p_t = t * (1 - p) + (1 - t) * p, with 1 - p = sigmoid(-x) (no cancellation).
    one_minus_pt = t * jax.nn.sigmoid(-x) + (1.0 - t) * jax.nn.sigmoid(x)
    loss = ce * one_minus_pt ** gamma
  if alpha is not None and alpha >= 0:
    loss = (alpha * t + (1.0 - alpha) * (1.0 - t)) * loss
  return loss


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den where den > 0, else 0; gradients free of NaN."""
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def giou_loss(pred_boxes, target_boxes) -> jax.Array:
  """Elementwise generalized-IoU loss ``1 - GIoU`` of matched box pairs, float32.

  ``GIoU = IoU - (C - U) / C`` (Rezatofighi et al. 2019), ``U`` the union and ``C`` the area of
  the smallest box enclosing both. Widths and heights below 0 count as 0; a zero union gives
  IoU 0 and a zero enclosing area a penalty of 0, so degenerate (zero-area) boxes give finite
  values and gradients. Any coordinate frame works (pixels, or distances relative to a point).

  Args:
    pred_boxes: ``[..., 4]`` xyxy boxes.
    target_boxes: ``[..., 4]`` xyxy boxes (the same shape).

  Returns:
    ``[...]`` float32 in [0, 2]; not reduced (callers normalise, e.g. by ``max(1, num_pos)``
    or by a sum of weights).
  """
  p = jnp.asarray(pred_boxes).astype(jnp.float32)
  g = jnp.asarray(target_boxes).astype(jnp.float32)
  if p.shape != g.shape or p.shape[-1:] != (4,):
    raise ValueError(f"giou_loss needs pred_boxes and target_boxes of the same shape [..., 4]; "
                     f"found {p.shape} and {g.shape}")

  def area(b):
    return jnp.maximum(b[..., 2] - b[..., 0], 0.0) * jnp.maximum(b[..., 3] - b[..., 1], 0.0)

  lt = jnp.maximum(p[..., :2], g[..., :2])
  rb = jnp.minimum(p[..., 2:], g[..., 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = area(p) + area(g) - inter
  enc_wh = jnp.maximum(jnp.maximum(p[..., 2:], g[..., 2:]) - jnp.minimum(p[..., :2], g[..., :2]),
                       0.0)
  enclosing = enc_wh[..., 0] * enc_wh[..., 1]
  giou = _safe_div(inter, union) - _safe_div(enclosing - union, enclosing)
  return 1.0 - giou
