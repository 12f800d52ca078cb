"""Load a trained workdir and predict, from your own script.

>>> from jaxvision import inference
>>> clf = inference.load_classifier("runs/demo")          # best checkpoint, config from the workdir
>>> clf.predict(["a.png", "b.png"], top_k=3)               # top-k labels per file
>>> probs = clf.probabilities(uint8_images)                # [N, K], images as the dataset stores them
>>> feats = clf.embed(uint8_images)                        # [N, D] pre-logits features
>>> inference.predict_pretrained("EfficientNetLite0", ["a.jpg"], top_k=5)  # ImageNet labels

:func:`load` restores any task's workdir (``config.json`` written when training started, the
best or latest checkpoint) as a :class:`Loaded`; :func:`load_classifier` wraps a
classification workdir in a :class:`Classifier`. Images given as arrays are in the dataset's
stored format (uint8 ``[N, H, W, C]`` of ``meta['dataset_image_shape']``) and go through the
run's evaluation preprocessing (``meta['pp_eval']``), exactly as files do.
:func:`pretrained_classifier` wraps a model's pretrained ImageNet weights (no workdir) in a
:class:`Classifier`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxvision import models, tasks
from jaxvision.data import images as image_io
from jaxvision.tasks import classification
from jaxvision.training import trainer
from jaxvision.training.task import Task


@dataclasses.dataclass
class Loaded:
  """A restored checkpoint of a workdir.

  Attributes:
    task: the task built from the workdir's config; config: that config.
    state: the restored train state; meta: the checkpoint's metadata; step: its step.
  """
  task: Task
  config: ml_collections.ConfigDict
  state: Any
  meta: dict
  step: int


def load(workdir: str | os.PathLike, *, checkpoint: str = "best",
         config: ml_collections.ConfigDict | None = None) -> Loaded:
  """Restores the ``'best'`` or ``'latest'`` checkpoint of ``workdir`` (config: the
  workdir's ``config.json`` unless given)."""
  config = config if config is not None else trainer.load_config(workdir)
  task = tasks.create_task(config)
  restored = trainer.restore(task, workdir, checkpoint)
  return Loaded(task, config, restored.state, restored.meta, restored.step)


class Classifier:
  """A trained classifier: ``probabilities``, ``predict`` (top-k labels), ``embed``.

  Attributes:
    class_names: the ``K`` class names; variables: ``{'params', 'batch_stats'?}``;
    apply_fn: ``apply_fn(variables, x, train=False) -> (logits, {'pre_logits': ...})``;
    meta: the checkpoint's metadata (``input_shape``, ``pp_eval``, ...).
  """

  def __init__(self, apply_fn, variables: dict, meta: dict):
    self.apply_fn, self.variables, self.meta = apply_fn, variables, meta
    self.class_names = list(meta["class_names"])
    self._forward = jax.jit(lambda v, x: self.apply_fn(v, x, train=False))

  def _inputs(self, images) -> np.ndarray:
    if isinstance(images, (str, os.PathLike)) or (
        isinstance(images, Sequence) and images and isinstance(images[0], (str, os.PathLike))):
      return image_io.load_images(images, image_shape=tuple(self.meta["dataset_image_shape"]),
                                  pp=self.meta["pp_eval"])
    images = np.asarray(images)
    expected = tuple(self.meta["dataset_image_shape"])  # (None, None, C): any size
    if images.ndim != 4 or any(e is not None and e != d
                               for e, d in zip(expected, images.shape[1:])):
      raise ValueError(f"expected images [N, {', '.join(map(str, expected))}] as the dataset "
                       f"stores them, or image file paths; found shape {images.shape}")
    return image_io.preprocess_images(images, pp=self.meta["pp_eval"])

  def probabilities(self, images) -> np.ndarray:
    """Class probabilities float32 ``[N, K]`` of image files or stored-format arrays."""
    logits, _ = self._forward(self.variables, jnp.asarray(self._inputs(images)))
    return np.asarray(jax.nn.softmax(logits.astype(jnp.float32), axis=-1))

  def embed(self, images) -> np.ndarray:
    """The model's ``pre_logits`` features float32 ``[N, D]``."""
    _, out = self._forward(self.variables, jnp.asarray(self._inputs(images)))
    return np.asarray(out["pre_logits"], np.float32)

  def predict(self, images, *, top_k: int = 3) -> list[dict]:
    """Top-k ``{'label', 'class_id', 'probability'}`` per image (plus ``'file'`` for files)."""
    files = None
    if isinstance(images, (str, os.PathLike)):
      images = [images]
    if isinstance(images, Sequence) and images and isinstance(images[0], (str, os.PathLike)):
      files = [str(p) for p in images]
    return classification.top_k_labels(self.probabilities(images), self.class_names, top_k,
                                       files)


def load_classifier(workdir: str | os.PathLike, *, checkpoint: str = "best",
                    config: ml_collections.ConfigDict | None = None) -> Classifier:
  """A classification workdir's checkpoint as a :class:`Classifier`."""
  config = config if config is not None else trainer.load_config(workdir)
  if config.get("task", "classification") != "classification":
    raise ValueError(f"expected a classification workdir; {workdir} holds a "
                     f"{config.task!r} run")
  return Classifier(*classification.load_classifier(workdir, checkpoint=checkpoint,
                                                    config=config))


def pretrained_classifier(name: str, *, cache_dir: str | os.PathLike | None = None) -> Classifier:
  """``name``'s pretrained ImageNet classifier (``models.pretrained_variables``) as a
  :class:`Classifier` over ImageNet's class names. Image files and uint8 arrays
  ``[N, H, W, 3]`` of any size go through ``models.preprocessing(name)`` (for
  EfficientNetLite0: shorter side to 256, central 224 x 224 crop, ``(x - 127) / 128``).
  ``cache_dir``: see ``models.pretrained_variables``."""
  spec = models.pretrained.get_spec(name)
  model = models.create_model(name, num_classes=spec.num_classes)
  variables, _ = models.pretrained_variables(name, cache_dir=cache_dir)
  meta = {"class_names": spec.class_names(), "dataset_image_shape": [None, None, 3],
          "input_shape": list(spec.input_shape), "pp_eval": spec.preprocessing,
          "model": name}
  return Classifier(model.apply, variables, meta)


def predict_pretrained(name: str, image_paths: Sequence[str | os.PathLike], *,
                       top_k: int = 5) -> list[dict]:
  """Top-k ImageNet labels of image files with ``name``'s pretrained weights: per file
  ``{'file', 'top_k': [{'label', 'class_id', 'probability'}, ...]}``, highest first."""
  if not image_paths:
    raise ValueError("no images given: pass image file paths (--images=a.jpg,b.png)")
  return pretrained_classifier(name).predict(list(image_paths), top_k=top_k)
