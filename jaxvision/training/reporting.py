"""Run outputs: ``metrics.jsonl``, TensorBoard event files and plots.

Only process 0 writes. ``metrics.jsonl`` has one JSON object per line:
``{"step": int, "kind": "train"|"eval", ...scalars}``; TensorBoard receives the same scalars
under ``train/<name>`` and ``eval/<name>``.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping

import jax
import numpy as np


class MetricWriter:
  """Appends scalar metrics to ``<workdir>/metrics.jsonl`` and TensorBoard event files."""

  def __init__(self, workdir):
    self.workdir = pathlib.Path(workdir)
    self._enabled = jax.process_index() == 0
    self._tb = None
    if self._enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)
      import tensorflow as tf  # TensorBoard's writer
      self._tb = tf.summary.create_file_writer(str(self.workdir / "tensorboard"))

  def write(self, step: int, kind: str, scalars: Mapping[str, Any]):
    """Writes one record; values must be Python or NumPy scalars."""
    if not self._enabled:
      return
    record = {"step": int(step), "kind": kind}
    record.update({k: _to_python(v) for k, v in scalars.items()})
    with open(self.workdir / "metrics.jsonl", "a") as f:
      f.write(json.dumps(record) + "\n")
    import tensorflow as tf
    with self._tb.as_default():
      for k, v in record.items():
        if k not in ("step", "kind") and isinstance(v, (int, float)):
          tf.summary.scalar(f"{kind}/{k}", v, step=int(step))
    self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_metrics(path) -> list[dict]:
  """Reads a ``metrics.jsonl`` file into a list of records."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _to_python(v):
  if isinstance(v, (np.generic, np.ndarray)) and np.ndim(v) == 0:
    return v.item()
  return v


def plot_curves(records: list[dict], path, *, metrics=("loss", "accuracy")):
  """Plots train and eval curves of ``metrics`` over steps into a PNG at ``path``."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6))
  axes = np.atleast_1d(axes)
  for ax, name in zip(axes, metrics):
    for kind, style in (("train", "-"), ("eval", "o-")):
      pts = [(r["step"], r[name]) for r in records if r.get("kind") == kind and name in r]
      if pts:
        steps, values = zip(*pts)
        ax.plot(steps, values, style, label=kind, markersize=4)
    ax.set_xlabel("step")
    ax.set_title(name)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_confusion_matrix(cm, class_names, path, *, title="confusion matrix"):
  """Draws a confusion matrix (rows true, columns predicted) with counts into a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cm = np.asarray(cm)
  k = cm.shape[0]
  size = max(4.0, 0.45 * k + 2)
  fig, ax = plt.subplots(figsize=(size, size))
  ax.imshow(cm, cmap="Blues")
  ax.set_xticks(range(k), class_names, rotation=45 if k > 10 else 0, ha="right")
  ax.set_yticks(range(k), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title)
  threshold = cm.max() / 2 if cm.size else 0
  if k <= 20:
    for i in range(k):
      for j in range(k):
        ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                color="white" if cm[i, j] > threshold else "black")
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
