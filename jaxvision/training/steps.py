"""Train, eval and predict steps for classifiers.

The steps are pure functions of ``(state, batch)``; ``training.jit.jit_train_step``/
``jit_eval_step`` compile them over a mesh.

Batch format: ``{'image': float [B, H, W, C], 'label': int32 [B]}`` plus, for evaluation,
``'mask': bool [B]`` marking real (not padding) examples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxvision import losses
from jaxvision.metrics import classification as cls_metrics


def _variables(state, params=None):
  variables = {"params": state.params if params is None else params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def make_train_step(*, label_smoothing: float = 0.0):
  """Returns ``train_step(state, batch) -> (state, metrics)``.

  Dropout draws from ``fold_in(state.rng, state.step)``. Metrics (scalars, batch means):
  ``loss`` (the optimized, label-smoothed cross-entropy), ``accuracy``, ``grad_norm``.
  """

  def train_step(state, batch):
    step_rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      (logits, _), updates = state.apply_fn(
          _variables(state, params), batch["image"], train=True,
          rngs={"dropout": step_rng}, mutable=["batch_stats"])
      loss, _ = losses.softmax_cross_entropy(logits, batch["label"],
                                             label_smoothing=label_smoothing)
      return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(
        grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
        "grad_norm": optax.tree.norm(grads),
    }
    return new_state, metrics

  return train_step


def make_eval_step(num_classes: int):
  """Returns ``eval_step(state, batch) -> sums`` over the valid examples of the batch.

  ``sums``: ``loss_sum`` (unsmoothed cross-entropy), ``count`` and ``confusion_matrix``
  ``[K, K]``; padded examples (``mask == False``) contribute nothing.
  """

  def eval_step(state, batch):
    logits, _ = state.apply_fn(_variables(state), batch["image"], train=False)
    mask = batch["mask"]
    _, per_example = losses.softmax_cross_entropy(logits, batch["label"], mask=mask)
    return {
        "loss_sum": per_example.sum(),
        "count": mask.sum().astype(jnp.int32),
        "confusion_matrix": cls_metrics.confusion_matrix(
            batch["label"], jnp.argmax(logits, -1), num_classes, mask),
    }

  return eval_step


def predict_step(state, images):
  """Class probabilities ``[B, K]`` float32 for ``images [B, H, W, C]``."""
  logits, _ = state.apply_fn(_variables(state), images, train=False)
  return jax.nn.softmax(logits, axis=-1)


def make_epoch_step(train_step, *, batch_size: int):
  """Returns ``epoch_step(state, images, labels, key) -> (state, metrics)``: one epoch.

  The whole epoch is one ``lax.scan`` of ``train_step`` over the batches of a permutation of
  the examples drawn from ``key``; the last ``N % batch_size`` examples of the permutation
  are dropped. The dataset stays where it is (put it on the device once): each batch is a
  gather ``images[idx]``, so an epoch needs no host round trip. ``jit`` the result (donating
  ``state``) to compile an epoch as one program.

  Args (of ``epoch_step``):
    state: a ``TrainState``.
    images: ``[N, H, W, C]`` model inputs; labels: ``[N]`` int class ids.
    key: PRNG key of the epoch's shuffle.

  Returns:
    ``(state, metrics)``: metrics are ``train_step``'s, averaged over the epoch's steps.

  Raises:
    ValueError: fewer than ``batch_size`` examples.
  """

  def epoch_step(state, images, labels, key):
    n = images.shape[0]
    steps = n // batch_size
    if steps == 0:
      raise ValueError(f"an epoch needs at least batch_size={batch_size} examples, got {n}")
    order = jax.random.permutation(key, n)[:steps * batch_size].reshape(steps, batch_size)

    def body(state, idx):
      return train_step(state, {"image": images[idx], "label": labels[idx]})

    state, metrics = jax.lax.scan(body, state, order)
    return state, jax.tree_util.tree_map(jnp.mean, metrics)

  return epoch_step

