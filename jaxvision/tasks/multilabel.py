"""Multi-label image tagging: the steps and the task (``config.task = 'multilabel'``).

A classifier-shaped model (``jaxvision.models``: ``model(x, train=...) -> (logits [B, K],
{'pre_logits': ...})``) gets one independent sigmoid per label and is trained with binary
cross-entropy (``losses.sigmoid_binary_cross_entropy``). Batch format: ``{'image': float
[B, H, W, C], 'label': float32 [B, K] multi-hot}`` plus, for evaluation, ``'mask': bool [B]``.

:class:`MultiLabelTask` trains ``config.model`` on a mosaic dataset (``config.dataset``, e.g.
``'mosaic:cifar10'``, with ``config.mosaic`` options; see ``jaxvision.data.mosaic``), with
the fine-tuning of the classification task (``tasks.finetune``: ``init_from='imagenet'`` or
another workdir, ``head``, ``freeze_backbone``, ``backbone_lr_multiplier``). Every
``eval_every`` steps the val split is evaluated (``metrics.multilabel``): mean average
precision over labels (``mAP``, which ranks checkpoints), per-label AP, and per-label
precision/recall/F1 at thresholds tuned on that same split (optimistic: for monitoring).

At the end the best val checkpoint is evaluated on ``config.test_split``: ``results.json``'s
``eval`` holds the test mAP, per-label AP and the per-label precision/recall/F1 at the
thresholds tuned on val (each label's F1-maximising threshold, applied unchanged to test),
with ``checkpoint_step`` and ``best_val``. The thresholds are also written to
``thresholds.json`` (with the checkpoint step they belong to), which ``predict`` reads, and
``plots/test_tags.png`` shows the first test mosaics with their predicted and true tags.

Modes: ``train``, ``evaluate`` (a split, default the test split, with the best or latest
checkpoint and thresholds tuned on val for that checkpoint; writes ``eval_<split>.json`` and
``thresholds.json``) and ``predict`` (image files: per file, the tags above their tuned
threshold as JSON ``{'label', 'class_id', 'probability', 'threshold'}``, and every label's
probability).
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

from jaxvision import losses, models, visualize
from jaxvision.data import images as image_io
from jaxvision.data import mosaic, preprocess
from jaxvision.metrics import multilabel as ml_metrics
from jaxvision.tasks import finetune
from jaxvision.training import jit as jit_lib
from jaxvision.training import sharding, trainer
from jaxvision.training import state as state_lib
from jaxvision.training.task import Task, compute_dtype

THRESHOLDS_FILE = "thresholds.json"


def make_train_step(*, label_smoothing: float = 0.0, frozen_statistics: bool = False,
                    trainable: str | None = None):
  """Returns ``train_step(state, batch) -> (state, metrics)``.

  Dropout draws from ``fold_in(state.rng, state.step)``. Metrics (batch means): ``loss`` (the
  optimized binary cross-entropy, mean over labels), ``label_accuracy`` (the fraction of
  labels right at probability 0.5) and ``grad_norm``. ``frozen_statistics`` and
  ``trainable``: as ``classification.make_train_step`` (a linear probe).
  """
  pattern = None if trainable is None else re.compile(trainable)

  def train_step(state, batch):
    step_rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      params = finetune.stop_gradient_outside(params, pattern)
      (logits, _), updates = state.apply_fn(
          finetune.variables(state, params), batch["image"], train=not frozen_statistics,
          rngs={"dropout": step_rng}, mutable=["batch_stats"])
      loss, _ = losses.sigmoid_binary_cross_entropy(logits, batch["label"],
                                                    label_smoothing=label_smoothing)
      return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(
        grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    metrics = {
        "loss": loss,
        "label_accuracy": jnp.mean((logits > 0) == (batch["label"] > 0.5)),
        "grad_norm": optax.tree.norm(grads),
    }
    return new_state, metrics

  return train_step


def eval_step(state, batch):
  """``{'probabilities' [B, K], 'loss' [B], 'mask' [B]}``: sigmoid probabilities, the
  unsmoothed binary cross-entropy (0 for padding rows) and the batch's ``mask`` (all True
  when absent), so that the rows of the global batch can be told apart on every host."""
  logits, _ = state.apply_fn(finetune.variables(state), batch["image"], train=False)
  mask = batch.get("mask")
  if mask is None:
    mask = jnp.ones(logits.shape[:1], bool)
  _, per_example = losses.sigmoid_binary_cross_entropy(logits, batch["label"], mask=mask)
  return {"probabilities": jax.nn.sigmoid(logits.astype(jnp.float32)), "loss": per_example,
          "mask": mask}


def predict_step(state, images):
  """Label probabilities ``[B, K]`` float32 (independent sigmoids) of ``images``."""
  logits, _ = state.apply_fn(finetune.variables(state), images, train=False)
  return jax.nn.sigmoid(logits.astype(jnp.float32))


def create_model(config: ml_collections.ConfigDict, num_classes: int):
  """Builds ``config.model`` (``name`` plus constructor keywords) with ``num_classes``
  outputs."""
  kwargs = {k: v for k, v in config.model.items() if k != "name"}
  return models.create_model(config.model.name, num_classes=num_classes,
                             dtype=compute_dtype(config), **kwargs)


class Evaluator:
  """The model's probabilities on every mosaic of a split, scored with
  ``metrics.multilabel``: ``run(state) -> dict`` (see :meth:`run`)."""

  def __init__(self, task: MultiLabelTask, split: str, mesh, *, cache: dict | None = None):
    config = task.config
    sharding.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    self.task, self.split, self.mesh, self.cache = task, split, mesh, cache
    self.data = task.dataset.split(split)
    self._batches = mosaic.make_eval_iterator(self.data, global_batch_size=config.eval_batch_size,
                                              pp=config.pp_eval)
    self._step = jit_lib.jit_eval_step(eval_step, mesh, onednn=task.train_onednn)

  def scores(self, state) -> tuple[np.ndarray, float]:
    """``(probabilities float32 [N, K], mean loss)`` over the split, in its order."""
    step = int(jax.device_get(state.step))
    if self.cache is not None and step in self.cache:
      return self.cache[step]
    probs, loss_sum = [], 0.0
    for batch in self._batches:
      out = jax.device_get(self._step(state, sharding.shard_batch(batch, self.mesh)))
      probs.append(np.asarray(out["probabilities"])[np.asarray(out["mask"], bool)])
      loss_sum += float(np.sum(out["loss"]))
    probs = np.concatenate(probs)
    if len(probs) != len(self.data):
      raise RuntimeError(f"evaluation of split {self.split!r} saw {len(probs)} mosaics; the "
                         f"split has {len(self.data)}")
    result = (probs, loss_sum / len(probs))
    if self.cache is not None:
      self.cache[step] = result
    return result

  def run(self, state, thresholds=None, thresholds_from: str | None = None) -> dict:
    """The split's report: ``split``, ``step``, ``loss``, ``num_examples``, ``mAP``,
    ``macro_f1``, ``micro_f1``, ``micro_precision``, ``micro_recall``, ``exact_match`` and
    ``per_label`` (``AP``, ``threshold``, ``precision``, ``recall``, ``f1``, ``support``),
    ``thresholds_from`` (the split the thresholds were tuned on: this one unless
    ``thresholds`` are given)."""
    probs, loss = self.scores(state)
    if thresholds is None:
      thresholds, _ = ml_metrics.tune_thresholds(self.data.labels, probs)
      thresholds_from = self.split
    report = ml_metrics.multilabel_report(self.data.labels, probs, thresholds,
                                          self.task.dataset.class_names)
    return {"split": self.split, "step": int(jax.device_get(state.step)), "loss": loss,
            **report, "thresholds_from": thresholds_from}


class MultiLabelTask(Task):
  """Multi-label tagging on a mosaic dataset (see the module docstring).

  Config fields: ``dataset`` (``'mosaic:<classification dataset>'`` or ``'cifar10_mosaic'``)
  with ``mosaic`` (``jaxvision.data.mosaic.DEFAULTS``: ``num_train``, ``num_val``,
  ``num_test``, ``val_images``, ``grid``, ``min_classes``, ``max_classes``, ``seed``) and
  ``data_dir``; ``train_split``/``eval_split``/``test_split`` (``train``/``val``/``test``);
  ``pp_train``/``pp_eval``; ``model``; ``optimizer``; ``batch_size``/``eval_batch_size``;
  ``num_epochs`` or ``num_train_steps``; ``eval_every_steps`` (default once per epoch);
  ``label_smoothing``; ``init_from``, ``head``, ``freeze_backbone``,
  ``backbone_lr_multiplier`` (``tasks.finetune``); ``num_draw`` (test mosaics pictured at the
  end); ``seed``; ``dtype``.
  """
  name = "multilabel"
  modes = ("train", "evaluate", "predict")
  best_metric, best_mode = "mAP", "max"
  check_keys = ("model", "num_classes", "input_shape", "dataset")
  progress_metrics = ("loss", "label_accuracy")
  throughput_name = "images_per_s"

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self._val_scores: dict[int, tuple] = {}  # the eval split's scores by step
    self._test_scores: dict[int, tuple] = {}

  # -- Set-up. ---------------------------------------------------------------------------------

  def prepare(self):
    config = self.config
    if config.get("num_train_steps", -1) <= 0 and not config.get("num_epochs", 0) > 0:
      raise ValueError(f"config.num_epochs must be > 0 (or set config.num_train_steps > 0); "
                       f"found num_epochs={config.get('num_epochs')!r}")
    if config.model.name not in models.MODELS:
      raise ValueError(f"config.model.name must be one of {sorted(models.MODELS)}; found "
                       f"{config.model.name!r}")
    smoothing = config.get("label_smoothing", 0.0)
    if not (isinstance(smoothing, (int, float)) and 0 <= smoothing < 1):
      raise ValueError(f"config.label_smoothing must be a number in [0, 1); found {smoothing!r}")
    for key in ("pp_train", "pp_eval"):
      preprocess.parse(config[key])
    finetune.check_config(config)
    self._load_data()
    self._tx, self._schedule = finetune.make_optimizer(config, self.total_steps())

  def _load_data(self) -> None:
    """Checks the dataset name, options and splits, then makes the mosaics
    (``self.dataset``)."""
    config = self.config
    mosaic.resolve_name(config.dataset)
    options = mosaic.options(**self._mosaic_options())  # bad options: before any data
    splits = (config.train_split, config.eval_split, config.test_split)
    unknown = [s for s in splits if s not in mosaic.SPLITS]
    if unknown:
      raise ValueError(f"split {unknown[0]!r} is not a mosaic split; expected one of "
                       f"{mosaic.SPLITS}")
    if config.batch_size > options[f"num_{config.train_split}"]:
      raise ValueError(f"config.batch_size={config.batch_size} is more than the "
                       f"{options[f'num_{config.train_split}']} mosaics of split "
                       f"{config.train_split!r}")
    self.dataset = mosaic.get_mosaic_dataset(config.dataset, data_dir=config.get("data_dir"),
                                             **options)
    print(f"{self.dataset.name}: " + ", ".join(
        f"{s} {n} mosaics" for s, n in self.dataset.num_examples.items())
        + f" of {self.dataset.image_shape[0]}x{self.dataset.image_shape[1]}")

  def _mosaic_options(self) -> dict:
    opts = self.config.get("mosaic")
    return dict(opts.to_dict() if hasattr(opts, "to_dict") else (opts or {}))

  def steps_per_epoch(self) -> int:
    num = mosaic.options(**self._mosaic_options())[f"num_{self.config.train_split}"]
    return max(1, num // self.config.batch_size)

  def train_batches(self, start_step: int):
    config = self.config
    return mosaic.make_train_iterator(
        self.dataset.split(config.train_split), global_batch_size=config.batch_size,
        pp=config.pp_train, seed=config.seed, start_step=start_step)

  def _meta(self, input_shape) -> dict:
    config, ds = self.config, self.dataset
    return {
        "task": self.name,
        "model": config.model.name,
        "model_config": config.model.to_dict(),
        "num_classes": ds.num_classes,
        "class_names": list(ds.class_names),
        "input_shape": [int(d) for d in input_shape],
        "dataset": ds.name,
        "dataset_options": dict(ds.options),
        "dataset_image_shape": [int(d) for d in ds.image_shape],
        "pp_eval": config.pp_eval,
    }

  def create_state(self, example_batch, mesh, *, abstract: bool):
    state, input_shape = finetune.create_state(
        create_model(self.config, self.dataset.num_classes), self._tx, example_batch, mesh,
        self.config, abstract=abstract)
    self._input_shape = input_shape
    return state, self._meta(input_shape)

  def make_train_step(self):
    return make_train_step(label_smoothing=self.config.get("label_smoothing", 0.0),
                           **finetune.train_step_options(self.config))

  def learning_rate(self, step: int) -> float:
    return float(self._schedule(step))

  def make_evaluator(self, run) -> Evaluator:
    return Evaluator(self, self.config.eval_split, run.mesh, cache=self._val_scores)

  def summary_line(self, ev: dict) -> str:
    aps = " ".join(f"{name} {v['AP']:.3f}" for name, v in ev["per_label"].items()
                   if v["AP"] is not None)
    tuned = ("thresholds tuned here" if ev["thresholds_from"] == ev["split"]
             else f"thresholds from {ev['thresholds_from']}")
    return (f"[eval] step {ev['step']}: {ev['split']} mAP {ev['mAP']:.4f} loss {ev['loss']:.4f} "
            f"macro-F1 {ev['macro_f1']:.4f} ({tuned}; AP: {aps}; {ev['num_examples']} mosaics)")

  def eval_scalars(self, ev: dict) -> dict:
    out = {k: ev[k] for k in ("loss", "mAP", "macro_f1", "micro_f1", "exact_match")}
    out.update({f"AP_{name}": v["AP"] for name, v in ev["per_label"].items()
                if v["AP"] is not None})
    return out

  def curve_metrics(self, ev: dict) -> tuple[str, ...]:
    del ev
    return ("loss", "mAP", "macro_f1")

  def results_info(self, run) -> dict:
    ds = self.dataset
    return {"dataset": {"name": ds.name, "source": ds.source, "options": dict(ds.options),
                        "class_names": list(ds.class_names),
                        "image_shape": list(ds.image_shape),
                        "splits": {name: mosaic.split_summary(split)
                                   for name, split in ds.splits.items()}}}

  # -- The end of a run. ------------------------------------------------------------------------

  def _tuned_evaluation(self, state, mesh, split: str, *, cache=None,
                        split_cache=None) -> tuple[dict, dict]:
    """``(report of split, val report)``: thresholds tuned on the eval split, applied to
    ``split`` (``cache``, ``split_cache``: their scores by step, see :class:`Evaluator`)."""
    val = Evaluator(self, self.config.eval_split, mesh, cache=cache).run(state)
    thresholds = [val["per_label"][n]["threshold"] for n in self.dataset.class_names]
    if split == self.config.eval_split:
      return val, val
    ev = Evaluator(self, split, mesh, cache=split_cache).run(state, thresholds,
                                                             thresholds_from=val["split"])
    return ev, val

  def _write_thresholds(self, workdir, val: dict, step: int) -> None:
    if jax.process_index() != 0:
      return
    names = list(self.dataset.class_names)
    record = {"checkpoint_step": step, "tuned_on": val["split"], "class_names": names,
              "thresholds": [val["per_label"][n]["threshold"] for n in names],
              "f1_on_tuning_split": [val["per_label"][n]["f1"] for n in names]}
    (pathlib.Path(workdir) / THRESHOLDS_FILE).write_text(json.dumps(record, indent=2))

  def final_evaluation(self, run, state, last_eval: dict) -> dict:
    """The best checkpoint (by val mAP) on ``config.test_split`` with the thresholds tuned
    on val for it: the test report plus ``checkpoint_step`` and ``best_val``; writes
    ``thresholds.json``."""
    step = run.checkpointer.best_step() or run.checkpointer.latest_step()
    if step is not None and step != int(jax.device_get(state.step)):
      target, meta = self.restore_target(self._meta(self._input_shape), run.mesh)
      state = run.checkpointer.restore(step, target, meta, self.check_keys)
    step = int(jax.device_get(state.step))
    ev, val = self._tuned_evaluation(state, run.mesh, self.config.test_split,
                                     cache=self._val_scores, split_cache=self._test_scores)
    print(self.summary_line(ev))
    self._write_thresholds(run.workdir, val, step)
    self._final = (state, ev)
    return dict(ev, checkpoint_step=step, best_val=val)

  def write_outputs(self, run, state, results: dict):
    """``plots/<test split>_tags.png``: the first ``num_draw`` test mosaics, captioned with
    the tags predicted at the tuned thresholds and the true label set."""
    count = int(self.config.get("num_draw", 8))
    state, ev = getattr(self, "_final", (state, None))
    if ev is None or count < 1:
      return
    split = self.dataset.split(ev["split"])
    count = min(count, len(split))
    probs, _ = Evaluator(self, ev["split"], run.mesh, cache=self._test_scores).scores(state)
    names = list(self.dataset.class_names)
    thresholds = np.array([ev["per_label"][n]["threshold"] for n in names])
    captions = []
    for p, truth in zip(probs[:count], split.labels[:count]):
      above = [k for k in np.argsort(-p) if p[k] >= thresholds[k]]
      tags = ", ".join(f"{names[k]} {p[k]:.2f}" for k in above[:4]) or "(none)"
      if len(above) > 4:
        tags += f" (+{len(above) - 4})"
      true = ", ".join(names[k] for k in np.flatnonzero(truth))
      captions.append(f"{tags}\ntrue: {true}")
    visualize.plot_tagged_images(
        list(split.images(np.arange(count))), captions,
        run.workdir / "plots" / f"{ev['split']}_tags.png",
        title=f"{self.dataset.name} {ev['split']}: tags above the val-tuned thresholds "
              f"(mAP {ev['mAP']:.3f})")

  # -- Restoring and the other modes. ------------------------------------------------------------

  def restore_target(self, meta: dict, mesh):
    config = self.config
    model = create_model(config, meta["num_classes"])
    # The schedule's length does not change the optimizer state's shapes.
    tx, _ = finetune.make_optimizer(config, 1000)
    state = state_lib.create_train_state(model, tx, input_shape=meta["input_shape"],
                                         rng=jax.random.PRNGKey(0), mesh=mesh, abstract=True)
    return state, dict(meta, model=config.model.name)

  def evaluate(self, workdir, *, split: str | None = None, checkpoint: str = "best") -> dict:
    """The workdir's best (or latest) checkpoint on ``split`` (default ``config.test_split``)
    with thresholds tuned on ``config.eval_split`` for that checkpoint; writes
    ``eval_<split>.json`` and ``thresholds.json`` and returns the former's content."""
    split = split or self.config.test_split
    if split not in mosaic.SPLITS:
      raise ValueError(f"split {split!r} is not a mosaic split; expected one of {mosaic.SPLITS}")
    restored = trainer.restore(self, workdir, checkpoint)
    self._load_data()  # not prepare(): the run's init_from need not exist any more
    ev, val = self._tuned_evaluation(restored.state, restored.mesh, split)
    print(self.summary_line(ev))
    out = {"checkpoint_step": restored.step, "checkpoint": checkpoint, "eval": ev,
           "thresholds_from": val["split"]}
    self._write_thresholds(workdir, val, restored.step)
    if jax.process_index() == 0:
      (pathlib.Path(workdir) / f"eval_{split}.json").write_text(json.dumps(out, indent=2))
    return out

  def format_result(self, mode: str, result) -> str:
    if mode == "evaluate":
      return (f"Wrote eval_{result['eval']['split']}.json and {THRESHOLDS_FILE} (checkpoint "
              f"step {result['checkpoint_step']})")
    return super().format_result(mode, result)

  def predict(self, workdir, *, images, checkpoint: str = "best") -> list:
    """Tags image files with the workdir's checkpoint and its tuned thresholds
    (:func:`predict_files`)."""
    if not images:
      raise ValueError("no images given: pass --images=a.png,b.jpg")
    restored = trainer.restore(self, workdir, checkpoint)
    thresholds = load_thresholds(workdir, restored.step, restored.meta["class_names"])
    return predict_files(restored.state, restored.meta, images, thresholds)


def load_thresholds(workdir, step: int, class_names) -> np.ndarray:
  """The thresholds tuned for checkpoint ``step`` of ``workdir`` (its ``thresholds.json``).

  Raises:
    ValueError: none, or tuned for another checkpoint or other labels (run ``--mode=evaluate``
      to tune them for this checkpoint).
  """
  path = pathlib.Path(workdir) / THRESHOLDS_FILE
  hint = (f"tune them on the val split with python -m jaxvision.apps.tag evaluate "
          f"--workdir={workdir} (or python -m train.main --mode=evaluate --workdir=...)")
  try:
    record = json.loads(path.read_text())
  except FileNotFoundError:
    raise ValueError(f"no tuned thresholds in {path}: {hint}") from None
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is not readable JSON ({e}): {hint}") from None
  if record.get("checkpoint_step") != step or record.get("class_names") != list(class_names):
    raise ValueError(f"{path} holds thresholds for checkpoint step "
                     f"{record.get('checkpoint_step')}, not step {step}: {hint}")
  return np.asarray(record["thresholds"], np.float64)


def predict_files(state, meta: dict, image_paths, thresholds) -> list[dict]:
  """Tags of image files for a restored multi-label model (``meta``: its checkpoint's).

  Each file is read as the dataset stores images (resized to ``meta['dataset_image_shape']``)
  and passed through ``meta['pp_eval']``.

  Returns:
    per file ``{'file', 'tags': [{'label', 'class_id', 'probability', 'threshold'}, ...]
    (the labels at or above their threshold, most probable first), 'probabilities': {label:
    p}}``.
  """
  pixels = image_io.load_images(image_paths, image_shape=tuple(meta["dataset_image_shape"]),
                                pp=meta["pp_eval"])
  if list(pixels.shape[1:]) != list(meta["input_shape"]):
    raise ValueError(f"the model expects images of shape {tuple(meta['input_shape'])} after "
                     f"preprocessing; found {tuple(pixels.shape[1:])}")
  probs = np.asarray(jax.jit(predict_step)(state, jnp.asarray(pixels)))
  return tags_from_probabilities(probs, meta["class_names"], thresholds,
                                 [str(p) for p in image_paths])


def tags_from_probabilities(probs, names, thresholds, files=None) -> list[dict]:
  """Per row of ``probs [N, K]``: ``{'tags': [...], 'probabilities': {...}}`` (see
  :func:`predict_files`), plus ``'file'`` when ``files`` is given."""
  probs, thresholds = np.asarray(probs), np.asarray(thresholds, np.float64)
  if probs.ndim != 2 or probs.shape[1] != len(names) or thresholds.shape != (len(names),):
    raise ValueError(f"expected probabilities [N, {len(names)}] and {len(names)} thresholds; "
                     f"found {probs.shape} and {thresholds.shape}")
  out = []
  for i, p in enumerate(probs):
    record = {"file": files[i]} if files is not None else {}
    record["tags"] = [{"label": names[k], "class_id": int(k), "probability": float(p[k]),
                       "threshold": float(thresholds[k])}
                      for k in np.argsort(-p, kind="stable") if p[k] >= thresholds[k]]
    record["probabilities"] = {names[k]: float(p[k]) for k in range(len(names))}
    out.append(record)
  return out
