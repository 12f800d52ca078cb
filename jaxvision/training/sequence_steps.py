"""Train and eval steps for image-sequence prediction (next-frame forecasting).

Batch format: ``{'inputs': float [B, T_in, H, W, C], 'targets': float [B, T_out, H, W, C]}``
with pixel intensities in ``[0, 1]``, plus, for evaluation, ``'mask': bool [B]`` marking real
(not padding) sequences. The model maps ``inputs`` to per-pixel logits ``[B, T_out, H, W, C]``
(``(logits, intermediates) = model(inputs, train=...)``); ``sigmoid(logits)`` is the predicted
frame.

Losses and metrics (all averaged over pixels, then over frames and sequences):

* ``bce``: per-pixel sigmoid binary cross-entropy with soft targets,
  ``-[y log p + (1 - y) log(1 - p)]``, computed from the logits (stable for any logit). Its
  minimum is the targets' own entropy, not 0, since targets are grey levels.
* ``mse``: ``(sigmoid(logits) - y) ** 2``.
* Copy-last-frame baseline: every target frame is predicted as the last input frame. Its BCE
  clips that frame's pixels to ``[BASELINE_EPS, 1 - BASELINE_EPS]`` first (a pixel that is 0
  where the target is 1 would otherwise cost infinitely much), so each confidently wrong pixel
  costs at most ``-log(BASELINE_EPS)`` (6.9 nats).
* Blank baseline (``blank_mse``): every target frame predicted all zero, i.e. ``mean(y ** 2)``;
  on Moving-MNIST it is a stronger reference than copying the last frame for far-ahead frames.

Steps are pure functions of ``(state, batch)``; jit them over a mesh with
``steps.jit_train_step`` / ``steps.jit_eval_step``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

BASELINE_EPS = 1e-3


def _frame_mean(x: jax.Array) -> jax.Array:
  """Mean over the pixel axes ``[B, T, H, W, C] -> [B, T]``."""
  return x.mean(axis=(2, 3, 4))


def _bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
  return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32),
                                            targets.astype(jnp.float32))


def bce_of_probabilities(probs: jax.Array, targets: jax.Array,
                         eps: float = BASELINE_EPS) -> jax.Array:
  """Per-pixel BCE of predicted intensities ``probs`` clipped to ``[eps, 1 - eps]``."""
  p = jnp.clip(probs.astype(jnp.float32), eps, 1.0 - eps)
  y = targets.astype(jnp.float32)
  return -(y * jnp.log(p) + (1.0 - y) * jnp.log1p(-p))


def copy_last_frame(inputs: jax.Array, num_output_frames: int) -> jax.Array:
  """The copy-last-frame forecast: ``inputs[:, -1]`` repeated ``num_output_frames`` times."""
  last = inputs[:, -1:]
  return jnp.broadcast_to(last, (last.shape[0], num_output_frames, *last.shape[2:]))


def _check_batch(logits, targets):
  if logits.shape != targets.shape:
    raise ValueError(f"the model predicts frames of shape {logits.shape[1:]} but the targets "
                     f"have shape {targets.shape[1:]}; set the model's num_output_frames to "
                     f"the number of target frames")


def make_train_step():
  """Returns ``train_step(state, batch) -> (state, metrics)`` minimizing the mean BCE.

  Dropout (if the model has any) draws from ``fold_in(state.rng, state.step)``. Metrics
  (batch means): ``loss`` (BCE), ``mse``, ``grad_norm``.
  """

  def train_step(state, batch):
    step_rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      logits, _ = state.apply_fn({"params": params}, batch["inputs"], train=True,
                                 rngs={"dropout": step_rng})
      _check_batch(logits, batch["targets"])
      return _bce_with_logits(logits, batch["targets"]).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads)
    mse = jnp.mean((jax.nn.sigmoid(logits.astype(jnp.float32)) - batch["targets"]) ** 2)
    return new_state, {"loss": loss, "mse": mse, "grad_norm": optax.tree.norm(grads)}

  return train_step


def make_eval_step():
  """Returns ``eval_step(state, batch) -> sums`` over the valid sequences of the batch.

  ``sums``: ``count`` (int32) and, each ``[T_out]`` (per target frame, summed over sequences of
  per-frame pixel means), ``mse_sum``, ``bce_sum``, ``baseline_mse_sum``, ``baseline_bce_sum``,
  ``blank_mse_sum``. Padded sequences (``mask == False``) contribute nothing.
  """

  def eval_step(state, batch):
    inputs, targets = batch["inputs"], batch["targets"]
    logits, _ = state.apply_fn({"params": state.params}, inputs, train=False)
    _check_batch(logits, targets)
    mask = batch["mask"].astype(jnp.float32)[:, None]  # [B, 1]
    targets = targets.astype(jnp.float32)
    pred = jax.nn.sigmoid(logits.astype(jnp.float32))
    baseline = copy_last_frame(inputs, targets.shape[1]).astype(jnp.float32)

    def masked_sum(per_pixel):
      return (_frame_mean(per_pixel) * mask).sum(axis=0)  # [T_out]

    return {
        "count": batch["mask"].sum().astype(jnp.int32),
        "mse_sum": masked_sum((pred - targets) ** 2),
        "bce_sum": masked_sum(_bce_with_logits(logits, targets)),
        "baseline_mse_sum": masked_sum((baseline - targets) ** 2),
        "baseline_bce_sum": masked_sum(bce_of_probabilities(baseline, targets)),
        "blank_mse_sum": masked_sum(targets ** 2),
    }

  return eval_step


def predict_step(state, inputs: jax.Array) -> jax.Array:
  """Predicted frames ``sigmoid(logits)`` float32 ``[B, T_out, H, W, C]`` in ``[0, 1]``."""
  logits, _ = state.apply_fn({"params": state.params}, inputs, train=False)
  return jax.nn.sigmoid(logits.astype(jnp.float32))
