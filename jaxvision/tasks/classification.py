"""Image classification: the steps and the task (``config.task = 'classification'``).

Steps (pure functions of ``(state, batch)``; jit them over a mesh with ``training.jit``):
:func:`make_train_step`, :func:`make_eval_step`, :func:`predict_step` and
:func:`make_epoch_step` (a whole epoch as one ``lax.scan``). Batch format: ``{'image': float
[B, H, W, C], 'label': int32 [B]}`` plus, for evaluation, ``'mask': bool [B]`` marking real
(not padding) examples (all real when absent).

:class:`ClassificationTask` trains ``config.model`` (a classifier from ``jaxvision.models``)
on ``config.dataset`` (``jaxvision.data.get_dataset``) with the trainer; evaluation covers
every example of ``config.eval_split`` exactly once, and ranks checkpoints by accuracy. Its
outputs: ``results.json``'s ``eval`` (accuracy, loss, macro-F1, per-class report, confusion
matrix) and ``plots/confusion_matrix.png``. Modes: ``train``, ``evaluate`` (a split, with the
best or latest checkpoint; writes ``eval_<split>.json``), ``predict`` (image files, top-k
labels) and ``export`` (``jaxvision.export``: uint8 images in, logits and probabilities out).
"""

from __future__ import annotations

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxvision import data, losses, models
from jaxvision import export as export_lib
from jaxvision.data import images as image_io
from jaxvision.data import pipeline, preprocess
from jaxvision.metrics import classification as cls_metrics
from jaxvision.tasks import finetune
from jaxvision.training import jit as jit_lib
from jaxvision.training import reporting, sharding, trainer
from jaxvision.training import state as state_lib
from jaxvision.training.task import Task, compute_dtype


_variables = finetune.variables


def make_train_step(*, label_smoothing: float = 0.0, frozen_statistics: bool = False,
                    trainable: str | None = None):
  """Returns ``train_step(state, batch) -> (state, metrics)``.

  Dropout draws from ``fold_in(state.rng, state.step)``. Metrics (scalars, batch means):
  ``loss`` (the optimized, label-smoothed cross-entropy), ``accuracy``, ``grad_norm``.
  ``frozen_statistics``: the model runs in inference mode (BatchNorm normalises with its
  running averages and leaves them unchanged, no dropout), as a linear probe on a frozen
  pretrained backbone should. ``trainable``: a regular expression; only parameters whose path
  it finds are differentiated (the others get zero gradients and no backward pass is
  computed for them: a linear probe costs a forward pass and the head's gradient).
  """
  pattern = None if trainable is None else re.compile(trainable)

  def train_step(state, batch):
    step_rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      params = finetune.stop_gradient_outside(params, pattern)
      (logits, _), updates = state.apply_fn(
          _variables(state, params), batch["image"], train=not frozen_statistics,
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


def make_eval_step(num_classes: int, *, flip_tta: bool = False):
  """Returns ``eval_step(state, batch) -> sums`` over the valid examples of the batch.

  ``sums``: ``loss_sum`` (unsmoothed cross-entropy), ``count`` and ``confusion_matrix``
  ``[K, K]``; padded examples (``mask == False``) contribute nothing, and a batch without
  ``mask`` counts every example. ``flip_tta``: test-time augmentation, the prediction is the
  mean of the class probabilities of each image and its left-right mirror (the loss is the
  cross-entropy of that mean); two forward passes per batch.
  """

  def eval_step(state, batch):
    logits, _ = state.apply_fn(_variables(state), batch["image"], train=False)
    if flip_tta:
      mirrored, _ = state.apply_fn(_variables(state), batch["image"][:, :, ::-1], train=False)
      # the log of the mean probability: a log-probability for the loss and the argmax
      logits = (jnp.logaddexp(jax.nn.log_softmax(logits), jax.nn.log_softmax(mirrored))
                - jnp.log(2.0))
    mask = batch.get("mask")
    if mask is None:  # no padding: every example counts
      mask = jnp.ones(logits.shape[:1], bool)
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


def create_model(config: ml_collections.ConfigDict, num_classes: int):
  """Builds ``config.model`` (``name`` plus constructor keywords) for ``num_classes``."""
  kwargs = {k: v for k, v in config.model.items() if k != "name"}
  return models.create_model(config.model.name, num_classes=num_classes,
                             dtype=compute_dtype(config), **kwargs)


def _schedule_steps(config) -> int:
  """Schedule length for restoring only (the optimizer state's shapes do not depend on it)."""
  steps = int(config.get("num_train_steps", -1))
  return steps if steps > 0 else 1000


class Evaluator:
  """Evaluates every example of a split exactly once: ``run(state) -> eval dict``.

  The dict holds ``split``, ``num_examples``, ``loss`` (mean unsmoothed cross-entropy),
  ``accuracy``, ``macro_f1``, ``per_class`` (precision, recall, f1, support per class name)
  and ``confusion_matrix`` (``[K, K]`` lists, rows true classes).
  """

  def __init__(self, builder, info: data.DatasetInfo, *, split: str, pp: str,
               batch_size: int, mesh, flip_tta: bool = False):
    sharding.check_batch_size(batch_size, mesh, "eval_batch_size")
    self.info, self.split, self.mesh, self.flip_tta = info, split, mesh, flip_tta
    self._batches = pipeline.make_eval_iterator(builder, info, split=split,
                                                global_batch_size=batch_size, pp=pp)
    self._step = jit_lib.jit_eval_step(make_eval_step(info.num_classes, flip_tta=flip_tta),
                                       mesh)

  def run(self, state) -> dict:
    totals = trainer.sum_over_batches(self._step, state, self._batches, self.mesh)
    count = int(totals["count"])
    expected = self.info.num_examples.get(self.split)
    if expected is not None and count != expected:
      raise RuntimeError(f"evaluation of split {self.split!r} counted {count} examples; "
                         f"the split has {expected}")
    report = cls_metrics.classification_report(totals["confusion_matrix"],
                                               self.info.class_names)
    return {
        "split": self.split,
        "step": int(jax.device_get(state.step)),
        "flip_tta": self.flip_tta,
        "num_examples": count,
        "loss": float(totals["loss_sum"]) / max(count, 1),
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "per_class": report["per_class"],
        "confusion_matrix": np.asarray(totals["confusion_matrix"]).tolist(),
    }


class ClassificationTask(Task):
  """Image classification on a registered dataset (see the module docstring).

  Config fields: ``dataset`` (and ``data_dir``), ``model`` (``name`` plus keywords),
  ``optimizer`` (``training.optim``), ``pp_train``/``pp_eval`` (preprocessing specs),
  ``train_split``/``eval_split``, ``batch_size``/``eval_batch_size``, ``num_epochs`` or
  ``num_train_steps``, ``eval_every_steps`` (default: once per epoch), ``label_smoothing``,
  ``input_shape`` (optional check), ``seed``, ``dtype``. Fine-tuning (``tasks.finetune``):
  ``init_from`` (``'imagenet'``, or another workdir, e.g. a classification or multilabel run:
  its best checkpoint's weights wherever names and shapes match),
  ``head`` (a regular expression naming the head's parameters, e.g. ``'^Dense_1/'``) with
  ``freeze_backbone`` (train the head only, the model in inference mode: a linear probe) or
  ``backbone_lr_multiplier``. ``eval_flip_tta``: evaluate on the mean probabilities of each
  image and its mirror (see :func:`make_eval_step`; exports and ``predict`` stay single-view).
  """
  name = "classification"
  modes = ("train", "evaluate", "predict", "export")
  best_metric, best_mode = "accuracy", "max"
  # Resuming needs the same model, classes, input shape and dataset (a checkpoint of another
  # dataset is an error naming both, never a silent no-op).
  check_keys = ("model", "num_classes", "input_shape", "dataset")
  progress_metrics = ("loss", "accuracy")
  throughput_name = "images_per_s"

  def prepare(self):
    config = self.config
    if config.get("num_train_steps", -1) <= 0 and not config.get("num_epochs", 0) > 0:
      raise ValueError(f"config.num_epochs must be > 0 (or set config.num_train_steps > 0); "
                       f"found num_epochs={config.get('num_epochs')!r}")
    if config.model.name not in models.MODELS:  # before any data is prepared
      raise ValueError(f"config.model.name must be one of {sorted(models.MODELS)}; found "
                       f"{config.model.name!r}")
    smoothing = config.get("label_smoothing", 0.0)
    if not (isinstance(smoothing, (int, float)) and 0 <= smoothing < 1):
      raise ValueError(f"config.label_smoothing must be a number in [0, 1); found {smoothing!r}")
    for key in ("pp_train", "pp_eval"):
      preprocess.parse(config[key])  # an unknown op or bad argument fails before any data
    self._load_data()
    finetune.check_config(config)
    self._tx, self._schedule = self._optimizer(self.total_steps())

  def _load_data(self) -> None:
    config = self.config
    self.builder, self.info = data.get_dataset(config.dataset, data_dir=config.get("data_dir"))
    for split in (config.train_split, config.eval_split):
      pipeline.split_size(self.info, split)  # an unknown split fails here, not after an epoch

  def steps_per_epoch(self) -> int:
    return pipeline.steps_per_epoch(self.info, self.config.train_split, self.config.batch_size)

  def train_batches(self, start_step: int):
    config = self.config
    return pipeline.make_train_iterator(
        self.builder, self.info, split=config.train_split, global_batch_size=config.batch_size,
        pp=config.pp_train, seed=config.seed, start_step=start_step)

  def _meta(self, input_shape) -> dict:
    config, info = self.config, self.info
    return {
        "model": config.model.name,
        "model_config": config.model.to_dict(),
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "input_shape": [int(d) for d in input_shape],
        "dataset": info.name,
        "dataset_image_shape": [int(d) for d in info.image_shape],
        "pp_eval": config.pp_eval,
    }

  def _optimizer(self, total_steps: int):
    """``(tx, schedule)``: ``config.optimizer``, with the head/backbone groups when
    ``config.head`` is set (``finetune.make_optimizer``)."""
    return finetune.make_optimizer(self.config, total_steps)

  def create_state(self, example_batch, mesh, *, abstract: bool):
    state, input_shape = finetune.create_state(
        create_model(self.config, self.info.num_classes), self._tx, example_batch, mesh,
        self.config, abstract=abstract)
    return state, self._meta(input_shape)

  def make_train_step(self):
    return make_train_step(label_smoothing=self.config.get("label_smoothing", 0.0),
                           **finetune.train_step_options(self.config))

  def learning_rate(self, step: int) -> float:
    return float(self._schedule(step))

  def make_evaluator(self, run, split: str | None = None) -> Evaluator:
    config = self.config
    return Evaluator(self.builder, self.info, split=split or config.eval_split,
                     pp=config.pp_eval, batch_size=config.eval_batch_size,
                     mesh=run.mesh if run is not None else sharding.make_mesh(
                         config.get("num_devices")),
                     flip_tta=config.get("eval_flip_tta", False))

  def summary_line(self, ev: dict) -> str:
    tta = " (flip TTA)" if ev.get("flip_tta") else ""
    return (f"[eval] step {ev['step']}: {ev['split']}{tta} accuracy {ev['accuracy']:.4f} "
            f"loss {ev['loss']:.4f} macro-F1 {ev['macro_f1']:.4f} "
            f"({ev['num_examples']} examples)")

  def eval_scalars(self, ev: dict) -> dict:
    return {k: ev[k] for k in ("loss", "accuracy", "macro_f1")}

  def results_info(self, run) -> dict:
    info = self.info
    return {"dataset": {"name": info.name, "source": info.source,
                        "num_examples": dict(info.num_examples)}}

  def write_outputs(self, run, state, results: dict):
    ev = results["eval"]
    reporting.plot_confusion_matrix(
        ev["confusion_matrix"], self.info.class_names,
        run.workdir / "plots" / "confusion_matrix.png",
        title=f"{self.info.name} {ev['split']}: accuracy {ev['accuracy']:.4f}")

  def format_result(self, mode: str, result) -> str:
    if mode == "evaluate":
      return f"Wrote {result['file']} (checkpoint step {result['checkpoint_step']})"
    return super().format_result(mode, result)

  # -- Restoring and the other modes. ------------------------------------------------------------

  def restore_target(self, meta: dict, mesh):
    config = self.config
    model = create_model(config, meta["num_classes"])
    tx, _ = self._optimizer(_schedule_steps(config))
    state = state_lib.create_train_state(model, tx, input_shape=meta["input_shape"],
                                         rng=jax.random.PRNGKey(0), mesh=mesh, abstract=True)
    return state, dict(meta, model=config.model.name)

  def evaluate(self, workdir, *, split: str | None = None, checkpoint: str = "best") -> dict:
    """Evaluates the workdir's best (or latest) checkpoint on ``split`` (default
    ``config.eval_split``); writes and returns ``eval_<split>.json``'s content
    (``eval_<split>_flip_tta.json`` with ``eval_flip_tta``)."""
    split = split or self.config.eval_split
    restored = trainer.restore(self, workdir, checkpoint)
    self._load_data()  # not prepare(): the run's init_from need not exist any more
    meta = restored.meta
    if list(self.info.image_shape) != list(meta["dataset_image_shape"]):
      raise ValueError(
          f"checkpoint expects dataset images of shape {tuple(meta['dataset_image_shape'])}; "
          f"dataset {self.info.name!r} has {tuple(self.info.image_shape)}")
    ev = Evaluator(self.builder, self.info, split=split, pp=self.config.pp_eval,
                   batch_size=self.config.eval_batch_size, mesh=restored.mesh,
                   flip_tta=self.config.get("eval_flip_tta", False)).run(restored.state)
    print(self.summary_line(ev))
    name = f"eval_{split}_flip_tta.json" if ev["flip_tta"] else f"eval_{split}.json"
    out = {"checkpoint_step": restored.step, "checkpoint": checkpoint, "eval": ev}
    if jax.process_index() == 0:
      (pathlib.Path(workdir) / name).write_text(json.dumps(out, indent=2))
    return dict(out, file=name)

  def serving(self, state, meta: dict):
    """uint8 images ``[N, *meta['dataset_image_shape']]`` through ``meta['pp_eval']`` and the
    model (float32): ``logits`` and ``probabilities`` ``[N, K]`` (see
    ``export.classifier_serving``)."""
    spec = export_lib.classifier_serving(
        create_model(self.config, meta["num_classes"]), _variables(state),
        image_shape=meta["dataset_image_shape"], pp=meta["pp_eval"],
        class_names=meta["class_names"], name=meta["model"])
    if list(spec.metadata["model_input_shape"]) != list(meta["input_shape"]):
      raise ValueError(f"pp_eval {meta['pp_eval']!r} maps stored images of shape "
                       f"{tuple(meta['dataset_image_shape'])} to "
                       f"{tuple(spec.metadata['model_input_shape'])}; the model was trained on "
                       f"{tuple(meta['input_shape'])}")
    return spec

  export = export_lib.export_mode

  def predict(self, workdir, *, images, top_k: int = 3, checkpoint: str = "best") -> list:
    """Classifies image files with the workdir's checkpoint: per file, the top-k
    ``{'label', 'class_id', 'probability'}``."""
    if not images:
      raise ValueError("no images given: pass --images=a.png,b.jpg")
    if not (isinstance(top_k, int) and top_k >= 1):
      raise ValueError(f"top_k must be a positive number of labels; found {top_k!r}")
    restored = trainer.restore(self, workdir, checkpoint)
    return predict_files(restored.state, restored.meta, images, top_k=top_k)


def predict_files(state, meta: dict, image_paths, *, top_k: int = 3) -> list[dict]:
  """Top-k labels of image files for a restored classifier (``meta``: its checkpoint's)."""
  pixels = image_io.load_images(image_paths, image_shape=tuple(meta["dataset_image_shape"]),
                                pp=meta["pp_eval"])
  if list(pixels.shape[1:]) != list(meta["input_shape"]):
    raise ValueError(f"the model expects images of shape {tuple(meta['input_shape'])} after "
                     f"preprocessing; found {tuple(pixels.shape[1:])}")
  probs = np.asarray(jax.jit(predict_step)(state, jnp.asarray(pixels)))
  return top_k_labels(probs, meta["class_names"], top_k, [str(p) for p in image_paths])


def top_k_labels(probs: np.ndarray, names, top_k: int, files=None) -> list[dict]:
  """Per row of ``probs [N, K]``: ``{'top_k': [{'label', 'class_id', 'probability'}, ...]}``
  (highest first; ties by class id), plus ``'file'`` when ``files`` is given.

  Raises:
    ValueError: ``top_k`` is not an integer >= 1.
  """
  if not (isinstance(top_k, (int, np.integer)) and not isinstance(top_k, bool) and top_k >= 1):
    raise ValueError(f"top_k must be a positive number of labels; found {top_k!r}")
  k = min(top_k, len(names))
  out = []
  for i, p in enumerate(probs):
    order = np.argsort(-p, kind="stable")[:k]
    record = {"file": files[i]} if files is not None else {}
    record["top_k"] = [{"label": names[j], "class_id": int(j), "probability": float(p[j])}
                       for j in order]
    out.append(record)
  return out


def load_classifier(workdir, *, checkpoint: str = "best", config=None):
  """Restores a trained classifier for inference, e.g. to measure generated images.

  Args:
    workdir: a classification workdir (``checkpoints/`` and, unless ``config`` is given, the
      ``config.json`` or ``results.json`` that records the config it was trained with).
    checkpoint: ``'best'`` or ``'latest'``.
    config: the training config; default: the workdir's.

  Returns:
    ``(apply_fn, variables, meta)``: ``apply_fn(variables, x, train=False)`` gives
    ``(logits, {'pre_logits': ...})`` for images preprocessed with ``meta['pp_eval']`` from
    stored images of shape ``meta['dataset_image_shape']``; ``meta`` also holds
    ``num_classes``, ``class_names``, ``dataset`` and ``checkpoint_step``.
  """
  workdir = pathlib.Path(workdir).resolve()
  if config is None:
    try:
      config = trainer.load_config(workdir)
    except FileNotFoundError:
      raise FileNotFoundError(
          f"no results.json in classifier workdir {workdir}: finish its training run (e.g. "
          f"python -m train.main --config=train/configs/mnist_cnn.py --workdir={workdir}) or "
          f"pass its config") from None
  restored = trainer.restore(ClassificationTask(config), workdir, checkpoint)
  state = restored.state
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return state.apply_fn, variables, dict(restored.meta, checkpoint_step=restored.step)

