"""Object detection: the steps and the task (``config.task = 'detection'``).

The detectors (``jaxvision.models.detection``: ``FCOS``, ``FasterRCNN``) follow one contract:
``model(images, targets, train=True)`` returns a dict of weighted loss terms (their sum is
the training loss) and ``model(images, train=False)`` returns padded detections
``{'boxes' [B, D, 4] xyxy canvas pixels, 'scores' [B, D] (-1 padding), 'classes' [B, D]
(-1 padding), 'num_valid' [B]}``. Every shape is static, so a step compiles once whatever the
number of objects in the batch.

:class:`DetectionTask` trains ``config.model`` on a local VOC or COCO folder
(``config.dataset``, read by ``jaxvision.data.detection``) with the shared trainer. Each
evaluation runs the model on ``config.eval_split`` and scores it with
``jaxvision.metrics.coco_evaluate`` against the original annotations (detections mapped back
to original pixels); checkpoints are ranked by ``config.best_metric`` (default the VOC mAP50
of the val split). At the end the best checkpoint is evaluated on ``config.test_split``:
``results.json``'s ``eval`` holds that split, COCOeval's 12 numbers (``AP``, ``AP50``, ...,
``ARl``), ``VOC_AP50`` and ``per_class[<class name>]`` (``AP``, ``AP50``, ``VOC_AP50``,
``num_gt``); ``best_val`` holds the val evaluation of the same checkpoint. Prediction images
(boxes drawn) go to TensorBoard at each evaluation and to ``plots/`` at the end.

Modes: ``train``, ``evaluate`` (a split, best or latest checkpoint; writes
``eval_<split>.json``), ``predict`` (image files: JSON detections in original pixels, and a
PNG per image with the boxes drawn) and ``export`` (``jaxvision.export``: uint8 images of a
fixed size in, the evaluation preprocessing, the detector and its post-processing inside,
padded detections in the images' pixels out).
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow as tf

from jaxvision import export as export_lib
from jaxvision import metrics, visualize
from jaxvision.data import detection as det_data
from jaxvision.models import detection as det_models
from jaxvision.training import jit as jit_lib
from jaxvision.training import optim, reporting, sharding, trainer
from jaxvision.training import state as state_lib
from jaxvision.training.task import Task, compute_dtype

TARGET_KEYS = ("boxes", "labels", "mask")
# The 12 COCOeval summary numbers, in COCOeval's order.
COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
             "ARl")


def _variables(state, params=None):
  variables = {"params": state.params if params is None else params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def make_train_step():
  """Returns ``train_step(state, batch) -> (state, metrics)``.

  ``batch``: ``image [B, S, S, 3]``, ``boxes [B, M, 4]``, ``labels [B, M]``, ``mask [B, M]``.
  Sampling (Faster R-CNN's anchors and RoIs) and dropout draw from
  ``fold_in(state.rng, state.step)``. Metrics: ``loss`` (the sum of the terms), each term as
  ``loss_<name>``, ``grad_norm`` and ``boxes_per_image``.
  """

  def train_step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    targets = {k: batch[k] for k in TARGET_KEYS}

    def loss_fn(params):
      terms, updates = state.apply_fn(
          _variables(state, params), batch["image"], targets, train=True,
          rngs={"sampling": rng, "dropout": rng}, mutable=["batch_stats"])
      return sum(terms.values()), (terms, updates)

    (loss, (terms, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(
        grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    out = {"loss": loss, "grad_norm": optax.tree.norm(grads),
           "boxes_per_image": jnp.mean(jnp.sum(batch["mask"], axis=-1).astype(jnp.float32))}
    out.update({f"loss_{k}": v for k, v in terms.items()})
    return new_state, out

  return train_step


def predict_step(state, batch):
  """Padded detections for ``batch['image'] [B, S, S, 3]`` (canvas pixels; see the module
  docstring)."""
  return state.apply_fn(_variables(state), batch["image"], train=False)


def create_model(config: ml_collections.ConfigDict, num_classes: int):
  """Builds ``config.model``: ``name`` (``'FCOS'`` or ``'FasterRCNN'``), ``backbone`` (a dict
  with ``name`` and keywords for ``models.detection.create_backbone``), ``fpn`` (keywords of
  ``models.detection.FPN``, or None for the backbone's levels as they are) and the
  detector's own keywords."""
  spec = dict(config.model.to_dict() if hasattr(config.model, "to_dict") else config.model)
  name = spec.pop("name", None)
  return det_models.create_detector(name, num_classes=num_classes, dtype=compute_dtype(config),
                                    **spec)


def _canvas_to_original(boxes, scale, original_size):
  """``[B, N, 4]`` canvas boxes -> original pixels, clipped to each image."""
  boxes = det_data.to_original_boxes(np.asarray(boxes, np.float64),
                                     np.asarray(scale, np.float64))
  hw = np.asarray(original_size, np.float64)
  limit = np.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], -1)[:, None]
  return np.clip(boxes, 0.0, limit)


class Evaluator:
  """Detections on every image of a split, scored by ``metrics.coco_evaluate``.

  ``run(state) -> dict`` with ``split``, ``step``, ``num_images``, the 12 COCO numbers,
  ``VOC_AP50`` and ``per_class`` (by class name); each is also stored in ``history`` (by step)
  when given. With a ``writer``, the first ``num_draw`` images with their detections go to
  TensorBoard under ``<split>/detections``.
  """

  def __init__(self, task: DetectionTask, split: str, mesh, *, writer=None, num_draw: int = 0,
               history: dict | None = None):
    config = task.config
    self.history = history
    sharding.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    self.task, self.split, self.mesh = task, split, mesh
    self.writer, self.num_draw = writer, num_draw
    ds = task.load_split(split)
    self._batches = det_data.make_detection_pipeline(
        ds, canvas_size=config.canvas_size, max_boxes=config.max_boxes,
        batch_size=config.eval_batch_size, train=False, value_range=tuple(config.value_range))
    self.ground_truth, self._raw = _ground_truth(ds, task.info.class_names)
    self._step = jit_lib.jit_eval_step(predict_step, mesh, onednn=task.train_onednn)

  def detect(self, state) -> dict[str, np.ndarray]:
    """Detections of every image of the split in original pixels: ``image_ids [N]``,
    ``boxes [N, D, 4]``, ``scores [N, D]``, ``labels [N, D]``, ``num_valid [N]``."""
    out = {k: [] for k in ("image_ids", "boxes_xyxy", "scores", "labels", "num_valid")}
    for batch in self._batches.as_numpy_iterator():
      dets = jax.device_get(self._step(state, sharding.shard_batch(
          {"image": batch["image"]}, self.mesh)))
      keep = batch["example_mask"]
      out["image_ids"].append(batch["image_id"][keep])
      out["boxes_xyxy"].append(_canvas_to_original(
          dets["boxes"], batch["scale"], batch["original_size"])[keep])
      out["scores"].append(np.asarray(dets["scores"])[keep])
      out["labels"].append(np.asarray(dets["classes"])[keep])
      out["num_valid"].append(np.asarray(dets["num_valid"])[keep])
    return {k: np.concatenate(v) for k, v in out.items()}

  def run(self, state) -> dict:
    found = self.detect(state)
    expected = self.task.info.num_examples.get(self.split)
    if expected is not None and len(found["image_ids"]) != expected:
      raise RuntimeError(f"evaluation of split {self.split!r} saw {len(found['image_ids'])} "
                         f"images; the split has {expected}")
    scores = metrics.coco_evaluate(self.ground_truth, {
        **found, "labels": np.maximum(found["labels"], 0)}, use_ignore_flag=True)
    names = self.task.info.class_names
    ev = {"split": self.split, "step": int(jax.device_get(state.step)),
          "num_images": int(len(found["image_ids"]))}
    ev.update({k: float(scores[k]) for k in COCO_KEYS})
    ev["VOC_AP50"] = float(scores["VOC_AP50"])
    ev["per_class"] = {names[cat]: {k: (int(v) if k == "num_gt" else float(v))
                                    for k, v in entry.items() if k != "name"}
                       for cat, entry in scores["per_class"].items()}
    if self.history is not None:
      self.history[ev["step"]] = ev
    if self.writer is not None and self.num_draw:
      self.writer.write_images(ev["step"], f"{self.split}/detections",
                               self.draw(found, self.num_draw))
    return ev

  def draw(self, found: dict, count: int, *, min_score: float = 0.3) -> np.ndarray:
    """The first ``count`` images of the split with detections scoring >= ``min_score``
    drawn (uint8 ``[count, H, W, 3]``; images of one split may differ in size, so they are
    padded to the largest)."""
    if count < 1:
      raise ValueError(f"count must be >= 1 images to draw; found {count}")
    by_id = {int(i): j for j, i in enumerate(found["image_ids"])}
    pictures = []
    for image_id, image in list(self._raw.items())[:count]:
      j = by_id[image_id]
      n = int(found["num_valid"][j])
      keep = found["scores"][j, :n] >= min_score
      pictures.append(draw_detections(image, found["boxes_xyxy"][j, :n][keep],
                                      found["scores"][j, :n][keep],
                                      found["labels"][j, :n][keep], self.task.info.class_names))
    h = max(p.shape[0] for p in pictures)
    w = max(p.shape[1] for p in pictures)
    return np.stack([np.pad(p, ((0, h - p.shape[0]), (0, w - p.shape[1]), (0, 0)))
                     for p in pictures])


def draw_detections(image, boxes, scores, labels, class_names) -> np.ndarray:
  """``image`` (uint8 ``[H, W, 3]``) with ``boxes [N, 4]`` (original pixels) drawn and
  labelled ``"<class> <score>"``, coloured by class."""
  return visualize.draw_bounding_boxes(
      image, boxes, class_ids=labels,
      labels=[f"{class_names[int(c)]} {s:.2f}" for c, s in zip(labels, scores)])


def _ground_truth(ds: tf.data.Dataset, class_names) -> tuple[dict, dict]:
  """The COCO-format ground truth of a split in original pixels and its first images (uint8,
  by image id) for drawing. COCO crowd boxes stay crowd; VOC "difficult" objects are marked
  ``ignore`` (neither found nor missed, as the VOC devkit scores them)."""
  ids, boxes, labels, crowd, sizes, raw, difficult = [], [], [], [], [], {}, []
  for example in ds.as_numpy_iterator():
    objects = example["objects"]
    h, w = int(example["image/height"]), int(example["image/width"])
    yxyx = np.asarray(objects["bbox"], np.float64).reshape(-1, 4)
    boxes.append(np.stack([yxyx[:, 1] * w, yxyx[:, 0] * h, yxyx[:, 3] * w, yxyx[:, 2] * h], -1))
    labels.append(np.asarray(objects["label"], np.int64))
    crowd.append(np.asarray(objects.get("is_crowd", np.zeros(len(yxyx))), np.int64))
    difficult.extend(np.asarray(objects.get("is_difficult", np.zeros(len(yxyx))), bool))
    ids.append(int(example["image/id"]))
    sizes.append((h, w))
    if len(raw) < 8:
      raw[ids[-1]] = tf.io.decode_image(example["image"], channels=3).numpy()
  m = max([len(b) for b in boxes] + [1])
  pad = lambda a, shape: np.concatenate([a, np.zeros((m - len(a), *shape), a.dtype)])  # noqa
  gt = metrics.ground_truth_from_arrays(
      np.asarray(ids), np.stack([pad(b, (4,)) for b in boxes]),
      np.stack([pad(lab, ()) for lab in labels]), np.asarray([len(b) for b in boxes]),
      categories=list(class_names), iscrowd=np.stack([pad(c, ()) for c in crowd]),
      image_sizes=np.asarray(sizes))
  for annotation, hard in zip(gt["annotations"], difficult):  # annotations in input order
    annotation["ignore"] = int(hard)
  return gt, raw


class DetectionTask(Task):
  """Object detection on a local VOC or COCO folder (see the module docstring).

  Config fields: ``dataset`` (a VOC/COCO folder, or its path under
  ``$JAXVISION_DATA_DIR``), ``train_split``/``eval_split``/``test_split``, ``canvas_size``,
  ``max_boxes``, ``value_range``, augmentation (``scale_range``, ``flip_prob``,
  ``vflip_prob``, ``min_box_size``, ``shuffle_buffer``), ``model`` (see :func:`create_model`),
  ``optimizer`` (``training.optim``), ``batch_size``/``eval_batch_size``, ``num_epochs`` or
  ``num_train_steps``, ``eval_every_steps`` (default: once per epoch), ``best_metric``
  (an evaluation key, default ``'VOC_AP50'``), ``num_draw`` (images drawn per evaluation),
  ``seed``, ``dtype``; for ``--mode=export``, optionally ``export_image_size`` (``(H, W)`` of
  the exported model's input images; default the canvas).
  """
  name = "detection"
  modes = ("train", "evaluate", "predict", "export")
  best_metric, best_mode = "VOC_AP50", "max"
  check_keys = ("model", "num_classes", "canvas_size", "dataset")
  progress_metrics = ("loss",)
  throughput_name = "images_per_s"
  train_onednn = True

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.best_metric = config.get("best_metric", "VOC_AP50")
    self._val_history: dict[int, dict] = {}

  # -- Set-up. ---------------------------------------------------------------------------------

  def prepare(self):
    config = self.config
    if config.model.get("name") not in det_models.DETECTORS:
      raise ValueError(f"config.model.name must be one of {sorted(det_models.DETECTORS)}; "
                       f"found {config.model.get('name')!r}")
    backbone = config.model.get("backbone")
    if backbone is not None and backbone.get("name") not in det_models.BACKBONES:
      raise ValueError(f"config.model.backbone.name must be one of "
                       f"{sorted(det_models.BACKBONES)}; found {backbone.get('name')!r}")
    if config.get("num_train_steps", -1) <= 0 and not config.get("num_epochs", 0) > 0:
      raise ValueError(f"config.num_epochs must be > 0 (or set config.num_train_steps > 0); "
                       f"found num_epochs={config.get('num_epochs')!r}")
    for name in ("canvas_size", "max_boxes", "batch_size", "eval_batch_size"):
      if not (isinstance(config.get(name), int) and config.get(name) >= 1):
        raise ValueError(f"config.{name} must be an integer >= 1; found {config.get(name)!r}")
    if self.best_metric not in COCO_KEYS + ("VOC_AP50",):
      raise ValueError(f"config.best_metric must be one of {COCO_KEYS + ('VOC_AP50',)}; "
                       f"found {self.best_metric!r}")
    _, self.info = det_data.load_detection_dataset(config.dataset, config.train_split)
    for split in (config.train_split, config.eval_split, config.test_split):
      self._check_split(split)
    if self._split_size(config.train_split) < config.batch_size:
      raise ValueError(f"config.batch_size={config.batch_size} is more than the "
                       f"{self._split_size(config.train_split)} images of split "
                       f"{config.train_split!r}")
    self._tx, self._schedule = optim.make_optimizer(config.optimizer, self.total_steps())

  def _check_split(self, split: str) -> None:
    """A split string (TFDS syntax: ``'train'``, ``'train[:80%]'``, ``'train+val'``) naming
    only splits of the dataset."""
    names = [part.split("[")[0].strip() for part in split.split("+")]
    unknown = [n for n in names if n not in self.info.num_examples]
    if unknown:
      raise ValueError(f"split {unknown[0]!r} is not in dataset {self.config.dataset!r}; it "
                       f"has {sorted(self.info.num_examples)}")

  def _split_size(self, split: str) -> int:
    if split in self.info.num_examples:
      return self.info.num_examples[split]
    return sum(1 for _ in self.load_split(split))

  def load_split(self, split: str) -> tf.data.Dataset:
    """One split of the dataset, images still encoded (``data.detection`` decodes them)."""
    ds, _ = det_data.load_detection_dataset(self.config.dataset, split, decode_images=False)
    return ds

  def steps_per_epoch(self) -> int:
    return max(1, self._split_size(self.config.train_split) // self.config.batch_size)

  def train_batches(self, start_step: int):
    config = self.config
    ds = self.load_split(config.train_split)
    pipe = det_data.make_detection_pipeline(
        ds, canvas_size=config.canvas_size, max_boxes=config.max_boxes,
        batch_size=config.batch_size, train=True, seed=config.seed,
        shuffle_buffer=config.get("shuffle_buffer", 256),
        scale_range=tuple(config.scale_range), flip_prob=config.flip_prob,
        vflip_prob=config.get("vflip_prob", 0.0), min_box_size=config.min_box_size,
        value_range=tuple(config.value_range), start_step=start_step)
    keys = ("image",) + TARGET_KEYS
    return ({k: b[k] for k in keys} for b in pipe.as_numpy_iterator())

  def _meta(self) -> dict:
    config, info = self.config, self.info
    return {
        "model": config.model.name,
        "model_config": config.model.to_dict(),
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "canvas_size": int(config.canvas_size),
        "max_boxes": int(config.max_boxes),
        "value_range": [float(v) for v in config.value_range],
        "dataset": str(config.dataset),
    }

  def _state(self, mesh, *, abstract: bool, tx=None):
    config = self.config
    model = create_model(config, self.info.num_classes)
    return state_lib.create_train_state(
        model, tx or self._tx, input_shape=(config.canvas_size, config.canvas_size, 3),
        rng=jax.random.PRNGKey(config.seed), mesh=mesh, abstract=abstract)

  def create_state(self, example_batch, mesh, *, abstract: bool):
    shape = tuple(example_batch["image"].shape[1:])
    expected = (self.config.canvas_size, self.config.canvas_size, 3)
    if shape != expected:
      raise ValueError(f"the detection pipeline gives images of shape {shape}; expected "
                       f"{expected}")
    return self._state(mesh, abstract=abstract), self._meta()

  def make_train_step(self):
    return make_train_step()

  def learning_rate(self, step: int) -> float:
    return float(self._schedule(step))

  def make_evaluator(self, run) -> Evaluator:
    return Evaluator(self, self.config.eval_split, run.mesh, writer=run.writer,
                     num_draw=int(self.config.get("num_draw", 4)), history=self._val_history)

  def summary_line(self, ev: dict) -> str:
    per_class = " ".join(f"{name} {v['VOC_AP50']:.3f}" for name, v in ev["per_class"].items())
    return (f"[eval] step {ev['step']}: {ev['split']} VOC mAP50 {ev['VOC_AP50']:.4f} "
            f"(AP {ev['AP']:.4f}, AP50 {ev['AP50']:.4f}; {per_class}; "
            f"{ev['num_images']} images)")

  def eval_scalars(self, ev: dict) -> dict:
    out = {k: ev[k] for k in COCO_KEYS + ("VOC_AP50",)}
    out.update({f"VOC_AP50_{name}": v["VOC_AP50"] for name, v in ev["per_class"].items()})
    return out

  def curve_metrics(self, ev: dict) -> tuple[str, ...]:
    del ev
    return ("loss", "VOC_AP50", "AP")

  def results_info(self, run) -> dict:
    info = self.info
    return {"dataset": {"name": str(self.config.dataset), "format": info.format,
                        "class_names": list(info.class_names),
                        "num_examples": dict(info.num_examples)}}

  # -- The end of a run. ------------------------------------------------------------------------

  def final_evaluation(self, run, state, last_eval: dict) -> dict:
    """The best checkpoint (by ``best_metric`` on the eval split) evaluated on
    ``config.test_split``, with ``checkpoint_step`` and ``best_val`` (its eval-split
    figures)."""
    step = run.checkpointer.best_step() or run.checkpointer.latest_step()
    if step is not None and step != int(jax.device_get(state.step)):
      target, meta = self.restore_target(self._meta(), run.mesh)
      state = run.checkpointer.restore(step, target, meta, self.check_keys)
    step = int(jax.device_get(state.step))
    best_val = self._val_history.get(step)
    if best_val is None:  # ranked before a resume: evaluate it again
      best_val = last_eval if last_eval and last_eval["step"] == step else Evaluator(
          self, self.config.eval_split, run.mesh).run(state)
    test = Evaluator(self, self.config.test_split, run.mesh)
    ev = test.run(state)
    print(self.summary_line(ev))
    self._final = (state, test)
    return dict(ev, checkpoint_step=step, best_val=best_val)

  def write_outputs(self, run, state, results: dict):
    """``plots/<split>_detections.png``: the first test images with the final detections."""
    state, test = getattr(self, "_final", (state, None))
    if test is None or int(self.config.get("num_draw", 4)) < 1:
      return
    found = test.detect(state)
    grid = test.draw(found, int(self.config.get("num_draw", 4)))
    reporting.plot_image_grid(grid, run.workdir / "plots" / f"{test.split}_detections.png",
                              ncols=min(2, len(grid)), value_range=(0, 255),
                              title=f"{test.split}: detections scoring >= 0.3")

  # -- Restoring and the other modes. ------------------------------------------------------------

  def restore_target(self, meta: dict, mesh):
    config = self.config
    if not hasattr(self, "info"):
      _, self.info = det_data.load_detection_dataset(config.dataset, config.train_split)
    tx, _ = optim.make_optimizer(config.optimizer, 1000)
    state = self._state(mesh, abstract=True, tx=tx)
    return state, self._meta()

  def evaluate(self, workdir, *, split: str | None = None, checkpoint: str = "best") -> dict:
    """Evaluates the workdir's best (or latest) checkpoint on ``split`` (default
    ``config.test_split``); writes and returns ``eval_<split>.json``'s content."""
    split = split or self.config.test_split
    restored = trainer.restore(self, workdir, checkpoint)
    self._check_split(split)
    ev = Evaluator(self, split, restored.mesh).run(restored.state)
    print(self.summary_line(ev))
    out = {"checkpoint_step": restored.step, "checkpoint": checkpoint, "eval": ev}
    if jax.process_index() == 0:
      (pathlib.Path(workdir) / f"eval_{split}.json").write_text(json.dumps(out, indent=2))
    return out

  def serving(self, state, meta: dict):
    """uint8 images ``[N, H, W, 3]`` (``config.export_image_size``, default the canvas)
    through the evaluation preprocessing, the detector (float32) and its post-processing:
    ``boxes`` (xyxy input-image pixels), ``scores``, ``classes``, ``num_valid`` (see
    ``export.detector_serving``)."""
    size = self.config.get("export_image_size")
    return export_lib.detector_serving(
        create_model(self.config, meta["num_classes"]), _variables(state),
        canvas_size=meta["canvas_size"], image_size=None if size is None else tuple(size),
        value_range=meta["value_range"], class_names=meta["class_names"], name=meta["model"])

  export = export_lib.export_mode

  def predict(self, workdir, *, images, checkpoint: str = "best",
              out: str | None = None) -> list:
    """Detects objects in image files with the workdir's checkpoint.

    Returns, per file, ``{'file', 'detections': [{'label', 'class_id', 'score', 'box'
    (xyxy original pixels)}], 'image'}`` (the drawn PNG, in ``out``, default
    ``<workdir>/predictions``), detections scoring below ``config.score_threshold`` left out.
    """
    if not images:
      raise ValueError("no images given: pass --images=a.jpg,b.png")
    paths = [pathlib.Path(p) for p in images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
      raise FileNotFoundError(f"image file(s) not found: {', '.join(missing)}")
    restored = trainer.restore(self, workdir, checkpoint)
    meta = restored.meta
    out_dir = pathlib.Path(out) if out else pathlib.Path(workdir) / "predictions"
    out_dir.mkdir(parents=True, exist_ok=True)
    step = jax.jit(predict_step)
    results = []
    for path in paths:
      try:
        image = tf.io.decode_image(tf.io.read_file(str(path)), channels=3,
                                   expand_animations=False)
      except tf.errors.OpError as e:
        raise ValueError(f"{path}: not a readable image ({e.message.splitlines()[0]})") from None
      placed = det_data.preprocess_eval(
          {"image": image, "boxes": tf.zeros([0, 4]), "labels": tf.zeros([0], tf.int32),
           "image_id": tf.constant(-1, tf.int64), "original_size": tf.shape(image)[:2]},
          canvas_size=meta["canvas_size"], max_boxes=1, value_range=tuple(meta["value_range"]))
      dets = jax.device_get(step(restored.state, {"image": placed["image"].numpy()[None]}))
      n = int(dets["num_valid"][0])
      boxes = _canvas_to_original(dets["boxes"][:, :n], placed["scale"].numpy()[None],
                                  placed["original_size"].numpy()[None])[0]
      scores, labels = dets["scores"][0, :n], dets["classes"][0, :n]
      names = meta["class_names"]
      picture = draw_detections(image.numpy(), boxes, scores, labels, names)
      png = out_dir / f"{path.stem}_detections.png"
      tf.io.write_file(str(png), tf.io.encode_png(picture))
      results.append({"file": str(path), "image": str(png), "detections": [
          {"label": names[int(c)], "class_id": int(c), "score": float(s),
           "box": [float(v) for v in b]} for b, s, c in zip(boxes, scores, labels)]})
    return results
