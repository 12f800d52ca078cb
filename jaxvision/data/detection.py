"""Detection input pipelines: local detection folders and box-consistent preprocessing.

Box formats: TFDS stores normalized ``(ymin, xmin, ymax, xmax)``; ``from_tfds`` converts them,
once, to ``xyxy`` pixels ``(x1, y1, x2, y2)`` of the original image (box edges: a box that
reaches the right border has ``x2 == width``). Everything after that is ``xyxy`` pixels of the
image being transformed.

Preprocessing (``preprocess_train`` / ``preprocess_eval``) maps an image to a square
``canvas_size`` canvas: the image is resized keeping its aspect ratio so its longer side fills
the canvas (times a random scale factor in training), cropped at a random offset when larger
than the canvas, and zero-padded at the bottom/right. Training also flips left-right at
random (and up-down, with ``vflip_prob``: cells, aerial and microscope images have no
orientation). Boxes get the same transforms, are clipped to the image region of the canvas, and
boxes that end up empty (or thinner than ``min_box_size``) are dropped. The remaining boxes are
padded to ``max_boxes`` with a validity mask; an image with more boxes keeps the first
``max_boxes`` and emits a ``DetectionDataWarning``. Randomness is stateless: a train element's
augmentation is a function of ``(seed, element index)`` only.

Per-example outputs (``make_detection_pipeline`` batches them, adding a leading ``B``):

  image          float32 [S, S, 3], values in ``value_range`` (default [0, 1]); padding is 0
  boxes          float32 [max_boxes, 4] xyxy canvas pixels; 0 where ``mask`` is False
  labels         int32 [max_boxes], -1 where ``mask`` is False
  mask           bool [max_boxes], True for real boxes (a prefix)
  image_id       int64 [], the dataset's ``image/id`` (-1 if it has none)
  original_size  int32 [2], ``(height, width)`` of the source image
  scale          float32 [2], ``(scale_y, scale_x)``: canvas = original * scale - offset
  offset         int32 [2], ``(y, x)`` crop offset in resized pixels (0 in eval)
  flipped        bool [], whether the image was flipped left-right (False in eval)
  example_mask   bool [], False for padding examples of a final partial eval batch

``to_original_boxes`` maps eval-canvas boxes (predictions) back to original image pixels.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import warnings
from collections.abc import Mapping

import tensorflow as tf
import tensorflow_datasets as tfds

from jaxvision.data import paths
from jaxvision.data.builders import coco as coco_builder
from jaxvision.data.builders import voc as voc_builder
from jaxvision.data.builders.voc import DetectionDataWarning

__all__ = [
    "DetectionDataWarning", "DetectionInfo", "detection_builder", "detect_format",
    "load_detection_dataset", "from_tfds", "flip_left_right", "resize_crop_pad",
    "flip_up_down", "pad_boxes", "preprocess_train", "preprocess_eval", "make_detection_pipeline",
    "to_original_boxes",
]

DEFAULT_CANVAS_SIZE = 512
DEFAULT_MAX_BOXES = 100
DEFAULT_SCALE_RANGE = (0.8, 1.25)
# In training, boxes thinner or shorter than this (canvas pixels) after cropping are dropped:
# a sliver of an object at the crop border is not a useful target. Eval drops only empty boxes.
DEFAULT_MIN_BOX_SIZE = 1.0

# ---------------------------------------------------------------------------------------------
# Loading local folders

_BUILDERS = {"voc": voc_builder.VocFolder, "coco": coco_builder.CocoFolder}


@dataclasses.dataclass(frozen=True)
class DetectionInfo:
  """What a detection training or evaluation run needs to know about a prepared dataset.

  Attributes:
    format: ``"voc"`` or ``"coco"``.
    class_names: label ``i`` is ``class_names[i]``.
    category_ids: label ``i`` is source category ``category_ids[i]`` (COCO category ids;
      ``0..K-1`` for VOC, which has no ids).
    num_examples: images per split.
    dropped_boxes: per split, the warnings of boxes dropped when preparing (zero area).
    clipped_boxes: per split, the warnings of boxes clipped to their image when preparing.
    builder: the TFDS builder (``builder.info`` is the full ``tfds.core.DatasetInfo``).
    skipped_images: per split, the warnings of images skipped when preparing (their content
      does not decode: a truncated or corrupt file).
  """

  format: str
  class_names: tuple[str, ...]
  category_ids: tuple[int, ...]
  num_examples: Mapping[str, int]
  dropped_boxes: Mapping[str, tuple[str, ...]]
  clipped_boxes: Mapping[str, tuple[str, ...]]
  builder: tfds.core.DatasetBuilder
  skipped_images: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def _resolve_folder(path_or_name) -> pathlib.Path:
  path = pathlib.Path(path_or_name).expanduser()
  if path.is_dir():
    return path.resolve()
  under_root = paths.local_dataset_dir(str(path_or_name))
  if not path.is_absolute() and under_root.is_dir():
    return under_root
  raise FileNotFoundError(
      f"detection dataset {str(path_or_name)!r} not found: expected a VOC or COCO folder at "
      f"{path.resolve()} or {under_root}")


def detect_format(folder) -> str:
  """``"voc"`` if ``folder`` has Annotations/, ``"coco"`` if it has instances_*.json.

  Raises:
    FileNotFoundError: neither layout is there.
  """
  folder = pathlib.Path(folder)
  if (folder / "Annotations").is_dir():
    return "voc"
  if any(folder.glob("instances_*.json")) or any(folder.glob("annotations/instances_*.json")):
    return "coco"
  found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "nothing"
  raise FileNotFoundError(
      f"{folder}: expected a Pascal VOC folder (Annotations/, JPEGImages/, ImageSets/Main/) or a "
      f"COCO folder (instances_<split>.json + image folder); found {found}")


def detection_builder(path_or_name, *, format: str | None = None, data_dir=None,
                      **builder_kwargs) -> tfds.core.DatasetBuilder:
  """The (unprepared) TFDS builder for a local detection folder.

  Args:
    path_or_name: the folder, or its path relative to ``paths.data_root()`` (``"bccd/BCCD"``).
    format: ``"voc"`` or ``"coco"``; default: ``detect_format``.
    data_dir: where prepared records go; default ``paths.tfds_dir()``.
    **builder_kwargs: ``class_names=`` (VOC) or ``splits=`` (COCO).
  """
  folder = _resolve_folder(path_or_name)
  format = format or detect_format(folder)
  if format not in _BUILDERS:
    raise ValueError(f"format must be one of {sorted(_BUILDERS)}, got {format!r}")
  return _BUILDERS[format](folder, data_dir=data_dir or paths.tfds_dir(), **builder_kwargs)


def load_detection_dataset(path_or_name, split: str, *, data_dir=None, format: str | None = None,
                           shuffle_files: bool = False, decode_images: bool = True,
                           **builder_kwargs) -> tuple[tf.data.Dataset, DetectionInfo]:
  """Prepares (once) and loads one split of a local VOC or COCO detection folder.

  Args:
    path_or_name: the folder, or its path relative to ``paths.data_root()``.
    split: a TFDS split string (``"train"``, ``"val"``, ``"train+val"``, ``"train[:10]"``).
    data_dir: where prepared records go; default ``paths.tfds_dir()``.
    format: ``"voc"`` or ``"coco"``; default: inspect the folder.
    shuffle_files: passed to ``as_dataset``.
    decode_images: False keeps ``image`` as encoded bytes (cheap to shuffle; ``from_tfds``
      decodes them).
    **builder_kwargs: ``class_names=`` (VOC) or ``splits=`` (COCO).

  Returns:
    ``(dataset of TFDS feature dicts, DetectionInfo)``.

  Prepared records are reused as long as the folder's absolute path, its content (annotation
  files by a hash, images by size and modification time) and ``class_names`` / ``splits`` are
  unchanged; an edited folder is prepared again into a new directory (the old one can be
  deleted).
  """
  builder = detection_builder(path_or_name, format=format, data_dir=data_dir, **builder_kwargs)
  builder.download_and_prepare()
  decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
  ds = builder.as_dataset(split=split, shuffle_files=shuffle_files, decoders=decoders)
  metadata = dict(builder.info.metadata.items())
  names = tuple(builder.info.features["objects"]["label"].names)
  return ds, DetectionInfo(
      format=metadata["format"],
      class_names=names,
      category_ids=tuple(metadata.get("category_ids", range(len(names)))),
      num_examples={s: v.num_examples for s, v in builder.info.splits.items()},
      dropped_boxes={s: tuple(v) for s, v in metadata.get("dropped_boxes", {}).items()},
      clipped_boxes={s: tuple(v) for s, v in metadata.get("clipped_boxes", {}).items()},
      builder=builder,
      skipped_images={s: tuple(v) for s, v in metadata.get("skipped_images", {}).items()},
  )


# ---------------------------------------------------------------------------------------------
# Box-consistent transforms (tf ops, usable inside tf.data)


def from_tfds(example: Mapping, *, skip_crowd: bool = True) -> dict[str, tf.Tensor]:
  """TFDS detection features -> ``{image, boxes, labels, image_id, original_size}``.

  Args:
    example: a TFDS element with ``image`` (uint8 [H, W, 3] or encoded bytes), ``objects/bbox``
      (float32 [N, 4] normalized yxyx), ``objects/label`` and optionally ``image/id`` and
      ``objects/is_crowd`` (ours, TFDS ``voc`` and ``coco`` all qualify).
    skip_crowd: drop ``is_crowd`` boxes (COCO crowd regions are not training targets).

  Returns:
    image uint8 [H, W, 3]; boxes float32 [N, 4] xyxy pixels; labels int32 [N];
    image_id int64 [] (-1 when absent); original_size int32 [2] ``(H, W)``.
  """
  image = example["image"]
  if image.dtype == tf.string:
    image = tf.io.decode_image(image, channels=3, expand_animations=False)
  size = tf.shape(image)[:2]
  h, w = tf.cast(size[0], tf.float32), tf.cast(size[1], tf.float32)
  objects = example["objects"]
  yxyx = tf.reshape(tf.cast(objects["bbox"], tf.float32), [-1, 4])
  boxes = tf.stack([yxyx[:, 1] * w, yxyx[:, 0] * h, yxyx[:, 3] * w, yxyx[:, 2] * h], axis=-1)
  labels = tf.cast(objects["label"], tf.int32)
  if skip_crowd and "is_crowd" in objects:
    keep = tf.logical_not(tf.cast(objects["is_crowd"], tf.bool))
    boxes, labels = tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)
  image_id = example["image/id"] if "image/id" in example else tf.constant(-1)
  return {"image": image, "boxes": boxes, "labels": labels,
          "image_id": tf.cast(image_id, tf.int64), "original_size": tf.cast(size, tf.int32)}


def flip_left_right(image: tf.Tensor, boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Mirrors image [H, W, C] and its xyxy pixel boxes [N, 4]: ``x -> W - x``."""
  width = tf.cast(tf.shape(image)[1], boxes.dtype)
  x1, y1, x2, y2 = tf.unstack(boxes, num=4, axis=-1)
  return tf.reverse(image, axis=[1]), tf.stack([width - x2, y1, width - x1, y2], axis=-1)


def flip_up_down(image: tf.Tensor, boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Mirrors image [H, W, C] and its xyxy pixel boxes [N, 4] vertically: ``y -> H - y``."""
  height = tf.cast(tf.shape(image)[0], boxes.dtype)
  x1, y1, x2, y2 = tf.unstack(boxes, num=4, axis=-1)
  return tf.reverse(image, axis=[0]), tf.stack([x1, height - y2, x2, height - y1], axis=-1)


def resize_crop_pad(image: tf.Tensor, boxes: tf.Tensor, *, canvas_size: int,
                    scale=1.0, crop_fraction=(0.0, 0.0)) -> dict[str, tf.Tensor]:
  """Resizes image and boxes by ``scale`` times the fit-to-canvas factor, crops, pads.

  The resized size is ``max(1, round((H, W) * scale * canvas_size / max(H, W)))`` (bilinear).
  When it exceeds the canvas the crop offset is ``floor(crop_fraction * (excess + 1))``
  clamped to ``[0, excess]`` per axis (``crop_fraction`` in [0, 1)); the result is padded with
  zeros at the bottom/right to ``canvas_size``.

  Args:
    image: [H, W, C] (any real dtype; returned as float32 with the same values).
    boxes: float32 [N, 4] xyxy pixels of ``image``.
    canvas_size: S.
    scale: scalar factor on top of fitting the longer side to S (1.0 in eval).
    crop_fraction: ``(fy, fx)`` in [0, 1), where to crop an oversized image.

  Returns:
    ``image`` float32 [S, S, C]; ``boxes`` [N, 4] canvas pixels clipped to the image region
    (possibly empty); ``scale`` float32 [2] ``(resized_h / H, resized_w / W)``; ``offset``
    int32 [2] ``(y, x)``.
  """
  size = tf.shape(image)[:2]
  hw = tf.cast(size, tf.float32)
  fit = canvas_size / tf.reduce_max(hw)
  new_hw = tf.maximum(tf.cast(tf.round(hw * fit * tf.cast(scale, tf.float32)), tf.int32), 1)
  resized = tf.image.resize(tf.cast(image, tf.float32), new_hw, method="bilinear")
  max_offset = tf.maximum(new_hw - canvas_size, 0)
  fraction = tf.convert_to_tensor(crop_fraction, tf.float32)
  offset = tf.minimum(
      tf.cast(tf.floor(fraction * tf.cast(max_offset + 1, tf.float32)), tf.int32), max_offset)
  cropped = resized[offset[0]:offset[0] + canvas_size, offset[1]:offset[1] + canvas_size]
  canvas = tf.image.pad_to_bounding_box(cropped, 0, 0, canvas_size, canvas_size)
  canvas = tf.ensure_shape(canvas, [canvas_size, canvas_size, image.shape[-1]])

  scale_yx = tf.cast(new_hw, tf.float32) / hw
  extent = tf.cast(tf.minimum(new_hw - offset, canvas_size), tf.float32)  # image region (h, w)
  offset_f = tf.cast(offset, tf.float32)
  as_xyxy = lambda v: tf.stack([v[1], v[0], v[1], v[0]])  # noqa: E731  (y, x) -> xyxy order
  boxes = tf.cast(boxes, tf.float32) * as_xyxy(scale_yx) - as_xyxy(offset_f)
  boxes = tf.clip_by_value(boxes, 0.0, as_xyxy(extent))
  return {"image": canvas, "boxes": boxes, "scale": scale_yx, "offset": offset}


def pad_boxes(boxes: tf.Tensor, labels: tf.Tensor, max_boxes: int, *,
              image_id=None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Pads boxes [N, 4] / labels [N] to ``max_boxes``; keeps the first ``max_boxes``.

  When ``N > max_boxes`` a ``DetectionDataWarning`` naming ``image_id`` is emitted at run time
  (from inside tf.data, through ``tf.py_function``).

  Returns:
    boxes float32 [max_boxes, 4] (0 padding), labels int32 [max_boxes] (-1 padding),
    mask bool [max_boxes] (True for the first ``min(N, max_boxes)``).
  """
  n = tf.shape(boxes)[0]
  image_id = tf.constant(-1, tf.int64) if image_id is None else tf.cast(image_id, tf.int64)

  def warn(count, iid):
    warnings.warn(f"image id {int(iid)} has {int(count)} boxes, more than max_boxes="
                  f"{max_boxes}; keeping the first {max_boxes}", DetectionDataWarning)
    return True

  warned = tf.cond(n > max_boxes,
                   lambda: tf.py_function(warn, [n, image_id], Tout=tf.bool),
                   lambda: tf.constant(False))
  with tf.control_dependencies([warned]):
    k = tf.minimum(n, max_boxes)
  boxes = tf.pad(tf.cast(boxes[:k], tf.float32), [[0, max_boxes - k], [0, 0]])
  labels = tf.pad(tf.cast(labels[:k], tf.int32), [[0, max_boxes - k]], constant_values=-1)
  mask = tf.range(max_boxes) < k
  return (tf.ensure_shape(boxes, [max_boxes, 4]), tf.ensure_shape(labels, [max_boxes]), mask)


def _to_value_range(image: tf.Tensor, value_range: tuple[float, float]) -> tf.Tensor:
  lo, hi = value_range
  return tf.cast(image, tf.float32) * ((hi - lo) / 255.0) + lo


def _finish(features: Mapping, placed: Mapping, flipped, *, max_boxes: int,
            min_box_size: float) -> dict[str, tf.Tensor]:
  """Drops empty/thin boxes, pads to ``max_boxes`` and assembles the output dict."""
  boxes = placed["boxes"]
  wh = boxes[:, 2:] - boxes[:, :2]
  keep = tf.reduce_all((wh > 0.0) & (wh >= min_box_size), axis=-1)
  boxes, labels, mask = pad_boxes(tf.boolean_mask(boxes, keep),
                                  tf.boolean_mask(features["labels"], keep), max_boxes,
                                  image_id=features["image_id"])
  return {
      "image": placed["image"], "boxes": boxes, "labels": labels, "mask": mask,
      "image_id": features["image_id"], "original_size": features["original_size"],
      "scale": placed["scale"], "offset": placed["offset"],
      "flipped": tf.convert_to_tensor(flipped, tf.bool), "example_mask": tf.constant(True),
  }


def preprocess_train(features: Mapping, seed, *, canvas_size: int = DEFAULT_CANVAS_SIZE,
                     max_boxes: int = DEFAULT_MAX_BOXES,
                     scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
                     flip_prob: float = 0.5, min_box_size: float = DEFAULT_MIN_BOX_SIZE,
                     value_range: tuple[float, float] = (0.0, 1.0),
                     vflip_prob: float = 0.0) -> dict[str, tf.Tensor]:
  """Random flips, random scale in ``scale_range``, random crop, pad: see the module docstring.

  Args:
    features: ``from_tfds`` output.
    seed: int [2] stateless seed; independent seeds (flip, scale, crop, vertical flip) are
      split off (the first three as before vertical flips existed, so ``vflip_prob=0`` draws
      what it always drew).
  """
  flip_seed, scale_seed, crop_seed = tf.unstack(
      tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3))
  flipped = tf.random.stateless_uniform([], flip_seed) < flip_prob
  image = _to_value_range(features["image"], value_range)
  image, boxes = tf.cond(flipped, lambda: flip_left_right(image, features["boxes"]),
                         lambda: (image, features["boxes"]))
  if vflip_prob > 0:
    vflip_seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), 3)
    vflipped = tf.random.stateless_uniform([], vflip_seed) < vflip_prob
    image, boxes = tf.cond(vflipped, lambda: flip_up_down(image, boxes), lambda: (image, boxes))
  scale = tf.random.stateless_uniform([], scale_seed, minval=scale_range[0],
                                      maxval=scale_range[1])
  crop_fraction = tf.random.stateless_uniform([2], crop_seed)
  placed = resize_crop_pad(image, boxes, canvas_size=canvas_size, scale=scale,
                           crop_fraction=crop_fraction)
  return _finish(features, placed, flipped, max_boxes=max_boxes, min_box_size=min_box_size)


def preprocess_eval(features: Mapping, *, canvas_size: int = DEFAULT_CANVAS_SIZE,
                    max_boxes: int = DEFAULT_MAX_BOXES,
                    value_range: tuple[float, float] = (0.0, 1.0)) -> dict[str, tf.Tensor]:
  """Deterministic fit-to-canvas resize and zero pad (no flip, no crop, empty boxes dropped)."""
  image = _to_value_range(features["image"], value_range)
  placed = resize_crop_pad(image, features["boxes"], canvas_size=canvas_size)
  return _finish(features, placed, False, max_boxes=max_boxes, min_box_size=0.0)


def _pad_batch(batch: Mapping[str, tf.Tensor], batch_size: int) -> dict[str, tf.Tensor]:
  """Pads a (final, partial) batch to ``batch_size`` examples with ``example_mask`` False."""
  n = tf.shape(batch["image"])[0]
  out = {}
  for key, x in batch.items():
    fill = {"labels": -1, "image_id": -1, "scale": 1}.get(key, 0)  # scale 1: no 0/0 mapping back
    x = tf.pad(x, [[0, batch_size - n]] + [[0, 0]] * (x.shape.rank - 1),
               constant_values=tf.cast(fill, x.dtype))
    out[key] = tf.ensure_shape(x, [batch_size] + x.shape.as_list()[1:])
  return out


def make_detection_pipeline(
    ds: tf.data.Dataset, *, canvas_size: int = DEFAULT_CANVAS_SIZE,
    max_boxes: int = DEFAULT_MAX_BOXES, batch_size: int, train: bool, seed: int = 0,
    shuffle_buffer: int = 256, num_epochs: int | None = None,
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE, flip_prob: float = 0.5,
    min_box_size: float = DEFAULT_MIN_BOX_SIZE, value_range: tuple[float, float] = (0.0, 1.0),
    skip_crowd: bool = True, vflip_prob: float = 0.0, start_step: int = 0) -> tf.data.Dataset:
  """Batches of static shape from a dataset of TFDS detection elements.

  Args:
    ds: elements as returned by ``load_detection_dataset`` / ``tfds.load`` (voc, coco).
    canvas_size, max_boxes, batch_size: S, max_boxes, B of the output shapes.
    train: True: shuffle (``shuffle_buffer`` elements of ``ds``; seeded), repeat ``num_epochs``
      times (None: forever), augment, drop the last partial batch. False: one pass in order,
      no augmentation; the last batch is padded to B with ``example_mask`` False.
    seed: seeds the shuffle and the per-element augmentation (``[seed, element index]``).
    scale_range, flip_prob, vflip_prob, min_box_size: training augmentation (see
      ``preprocess_train``).
    value_range: image values map [0, 255] -> ``value_range``.
    skip_crowd: drop COCO crowd boxes.
    start_step: training only: the first batch is the batch ``start_step`` of the endless
      sequence (what a run resumed after ``start_step`` steps sees next). Elements before it
      are skipped before decoding, cheaply when ``ds`` holds encoded images
      (``load_detection_dataset(..., decode_images=False)``).

  Returns:
    A dataset of dicts described in the module docstring, with a leading batch dim B.
  """
  if canvas_size < 1 or max_boxes < 1 or batch_size < 1:
    raise ValueError(f"canvas_size, max_boxes and batch_size must be >= 1, got {canvas_size}, "
                     f"{max_boxes}, {batch_size}")
  if not 0.0 < scale_range[0] <= scale_range[1]:
    raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {scale_range}")
  for name, p in (("flip_prob", flip_prob), ("vflip_prob", vflip_prob)):
    if not 0.0 <= p <= 1.0:
      raise ValueError(f"{name} must be in [0, 1], got {p}")
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  autotune = tf.data.AUTOTUNE
  decode = functools.partial(from_tfds, skip_crowd=skip_crowd)
  if train:
    if shuffle_buffer > 1:
      ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.repeat(num_epochs).enumerate().skip(start_step * batch_size)
    augment = functools.partial(
        preprocess_train, canvas_size=canvas_size, max_boxes=max_boxes, scale_range=scale_range,
        flip_prob=flip_prob, min_box_size=min_box_size, value_range=value_range,
        vflip_prob=vflip_prob)
    base_seed = tf.constant(seed, tf.int64)
    ds = ds.map(lambda i, ex: augment(decode(ex), tf.stack([base_seed, i])),
                num_parallel_calls=autotune)
    ds = ds.batch(batch_size, drop_remainder=True)
  else:
    ds = ds.map(decode, num_parallel_calls=autotune)
    ds = ds.map(functools.partial(preprocess_eval, canvas_size=canvas_size, max_boxes=max_boxes,
                                  value_range=value_range), num_parallel_calls=autotune)
    ds = ds.batch(batch_size).map(functools.partial(_pad_batch, batch_size=batch_size))
  return ds.prefetch(autotune)


def to_original_boxes(boxes, scale, offset=None):
  """Maps xyxy canvas boxes back to pixels of the original image.

  ``original = (canvas + offset) / scale`` per axis; for eval batches ``offset`` is 0 and there
  is no flip. Works on NumPy and JAX arrays.

  Args:
    boxes: [..., N, 4] xyxy canvas pixels.
    scale: [..., 2] ``(scale_y, scale_x)`` from the pipeline.
    offset: optional [..., 2] ``(y, x)`` crop offset from the pipeline.
  """
  order = [1, 0, 1, 0]  # (y, x) -> x1, y1, x2, y2
  shifted = boxes if offset is None else boxes + offset[..., None, order]
  return shifted / scale[..., None, order]
