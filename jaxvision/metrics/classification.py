"""Classification metrics.

On device: ``confusion_matrix`` accumulates counts inside a jitted eval step (masked, so
padded examples never count). On host: ``classification_report`` turns the summed matrix into
accuracy and per-class precision, recall and F1 (NumPy float64).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(labels, predictions, num_classes: int, mask=None):
  """Counts ``cm[true, predicted]``.

  Args:
    labels: ``[B]`` int true classes.
    predictions: ``[B]`` int predicted classes.
    num_classes: ``K``.
    mask: optional ``[B]`` bool validity mask.

  Returns:
    ``[K, K]`` int32, rows are true classes, columns predictions.
  """
  weights = jnp.ones_like(labels, jnp.int32) if mask is None else mask.astype(jnp.int32)
  index = labels.astype(jnp.int32) * num_classes + predictions.astype(jnp.int32)
  counts = jnp.zeros((num_classes * num_classes,), jnp.int32).at[index].add(weights)
  return counts.reshape(num_classes, num_classes)


def classification_report(cm, class_names: Sequence[str] | None = None) -> dict:
  """Accuracy and per-class precision/recall/F1 from a confusion matrix.

  Args:
    cm: ``[K, K]`` counts, rows true, columns predicted.
    class_names: ``K`` names (default ``'0'..'K-1'``).

  Returns:
    ``{'num_examples', 'accuracy', 'macro_f1', 'per_class': {name: {'precision', 'recall',
    'f1', 'support'}}}``. A precision or recall with a zero denominator is 0 (as scikit-learn's
    ``zero_division=0``).
  """
  cm = np.asarray(jax.device_get(cm), dtype=np.float64)
  k = cm.shape[0]
  if cm.shape != (k, k):
    raise ValueError(f"confusion matrix must be square; found shape {cm.shape}")
  names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
  if len(names) != k:
    raise ValueError(f"{k} classes in the confusion matrix but {len(names)} class names")
  tp = np.diag(cm)
  predicted = cm.sum(axis=0)
  support = cm.sum(axis=1)
  precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
  recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
  total = cm.sum()
  return {
      "num_examples": int(total),
      "accuracy": float(tp.sum() / total) if total else 0.0,
      "macro_f1": float(f1.mean()),
      "per_class": {
          name: {"precision": float(p), "recall": float(r), "f1": float(f),
                 "support": int(s)}
          for name, p, r, f, s in zip(names, precision, recall, f1, support)
      },
  }
