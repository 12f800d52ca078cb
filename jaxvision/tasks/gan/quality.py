"""Sample quality of a GAN, measured with a trained classifier.

Generated images are quantized to uint8 (what a PNG stores), preprocessed with the
classifier's evaluation spec and scored with ``jaxvision.metrics.generative``: the classifier
score, the Frechet classifier distance to the real test features and, for conditional
samples, the conditional accuracy. Every report holds the real-data references beside the
model's values (the classifier score of the real test set, and the Frechet distance between
real train and test features).
"""

from __future__ import annotations

import pathlib

import numpy as np
import tensorflow as tf

from jaxvision.data import pipeline, preprocess
from jaxvision.metrics import generative
from jaxvision.tasks import classification


class QualityEvaluator:
  """Scores image sets with a trained classifier; real-data references are computed once.

  Args:
    classifier_workdir: workdir of a completed classification run (see
      ``jaxvision.tasks.classification.load_classifier``).
    builder, info: the GAN's dataset (its stored images must match the classifier's).
    checkpoint: the classifier checkpoint, ``'best'`` or ``'latest'``.
    num_real: real images per reference set (the first ``num_real`` of the test split, and
      of the train split).
    batch_size: classifier batch size.

  Attributes:
    reference: ``{'real_classifier_score', 'real_train_test_distance', 'num_real_samples'}``.
  """

  def __init__(self, classifier_workdir, *, builder, info, checkpoint: str = "best",
               num_real: int = 10000, batch_size: int = 500):
    self.apply_fn, self.variables, self.meta = classification.load_classifier(
        classifier_workdir, checkpoint=checkpoint)
    self.workdir = str(pathlib.Path(classifier_workdir).resolve())
    self.batch_size = batch_size
    if list(self.meta["dataset_image_shape"]) != list(info.image_shape):
      raise ValueError(
          f"the classifier in {self.workdir} was trained on images of shape "
          f"{tuple(self.meta['dataset_image_shape'])} ({self.meta['dataset']}); the GAN's "
          f"dataset {info.name!r} has {tuple(info.image_shape)}")
    if self.meta["num_classes"] != info.num_classes:
      raise ValueError(f"the classifier in {self.workdir} has {self.meta['num_classes']} "
                       f"classes; dataset {info.name!r} has {info.num_classes}")
    self._pp = preprocess.parse(self.meta["pp_eval"])
    test_probs, test_feats = self._real_features(builder, info, "test", num_real)
    _, train_feats = self._real_features(builder, info, "train", num_real)
    self._test_stats = generative.gaussian_stats(test_feats)
    self.reference = {
        "real_classifier_score": generative.classifier_score(test_probs),
        "real_train_test_distance": generative.frechet_distance(
            *generative.gaussian_stats(train_feats), *self._test_stats),
        "num_real_samples": len(test_feats),
    }

  def _real_features(self, builder, info, split, num):
    if pipeline.split_size(info, split) > num:
      split = f"{split}[:{num}]"
    batches = pipeline.make_eval_iterator(builder, info, split=split,
                                          global_batch_size=self.batch_size,
                                          pp=self.meta["pp_eval"], process_index=0,
                                          process_count=1)
    images = np.concatenate([b["image"][b["mask"]] for b in batches])
    return generative.classifier_features(self.apply_fn, self.variables, images,
                                          self.batch_size)

  def _classifier_inputs(self, images_uint8: np.ndarray) -> np.ndarray:
    ds = tf.data.Dataset.from_tensor_slices(images_uint8).map(
        lambda image: tf.cast(preprocess.apply_eval(self._pp, {"image": image})["image"],
                              tf.float32))
    return np.concatenate(list(ds.batch(self.batch_size).as_numpy_iterator()))

  def evaluate(self, images_uint8: np.ndarray, labels: np.ndarray | None = None,
               class_names=None) -> dict:
    """Quality of uint8 images ``[N, H, W, C]`` (``labels [N]``: the requested classes).

    Returns:
      ``classifier_score``, ``frechet_classifier_distance`` (to the real test features), the
      :attr:`reference` values, ``num_samples``, ``predicted_class_fractions`` (``[K]``, the
      share of samples classified as each class) and, with labels, ``conditional_accuracy``
      and ``per_class_accuracy`` (``{class name: accuracy}``).
    """
    images_uint8 = np.asarray(images_uint8)
    expected = tuple(self.meta["dataset_image_shape"])
    if images_uint8.dtype != np.uint8 or images_uint8.shape[1:] != expected:
      raise ValueError(f"the classifier expects uint8 images of shape [N, {expected}] (its "
                       f"dataset's); found {images_uint8.dtype} {images_uint8.shape}")
    probs, feats = generative.classifier_features(
        self.apply_fn, self.variables, self._classifier_inputs(images_uint8), self.batch_size)
    predicted = np.bincount(np.argmax(probs, axis=1), minlength=probs.shape[1]) / len(probs)
    out = {
        "num_samples": int(len(probs)),
        "classifier_score": generative.classifier_score(probs),
        "frechet_classifier_distance": generative.frechet_distance(
            *generative.gaussian_stats(feats), *self._test_stats),
        **self.reference,
        # Share of the samples the classifier assigns to each class (mode dropping shows here).
        "predicted_class_fractions": [float(f) for f in predicted],
    }
    if labels is not None:
      per_class = generative.per_class_accuracy(probs, labels)
      names = class_names or [str(k) for k in range(len(per_class))]
      out["conditional_accuracy"] = generative.conditional_accuracy(probs, labels)
      out["per_class_accuracy"] = {str(n): float(a) for n, a in zip(names, per_class)}
    return out


def summary_line(ev: dict) -> str:
  """One line for an ``eval`` dict: the model's values beside the real-data references."""
  step = ev["step"]
  if "classifier_score" not in ev:
    return f"[eval] step {step}: samples written (quality metrics skipped)"
  line = (f"[eval] step {step}: classifier score {ev['classifier_score']:.3f} "
          f"(real test {ev['real_classifier_score']:.3f}) | Frechet classifier distance "
          f"{ev['frechet_classifier_distance']:.3f} (real train-test "
          f"{ev['real_train_test_distance']:.3f}) | {ev['num_samples']} samples")
  fractions = ev.get("predicted_class_fractions")
  if fractions and "conditional_accuracy" not in ev:
    rare = int(np.argmin(fractions))
    line += f" | rarest class {rare}: {100 * fractions[rare]:.1f}% of samples"
  if "conditional_accuracy" in ev:
    worst = min(ev["per_class_accuracy"], key=ev["per_class_accuracy"].get)
    line += (f" | conditional accuracy {ev['conditional_accuracy']:.4f} (lowest class "
             f"{worst!r}: {ev['per_class_accuracy'][worst]:.4f})")
  return line
