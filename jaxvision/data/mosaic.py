"""A seeded multi-label image set made of classification images: G x G mosaics.

No real multi-label photo collection is available offline, so the tagging task trains on a
synthetic one that is honest about what it is: each example is a ``grid x grid`` (default
2 x 2) mosaic of images of a single-label dataset (CIFAR-10 by default: 64 x 64 mosaics of
four 32 x 32 images), and its label set is the set of classes present among its tiles
(multi-hot ``[K]``). Nothing else about the mosaic carries a label: tiles are pasted edge to
edge without gaps, blending or resizing.

How a mosaic is drawn (``draw_tiles``; everything from ``np.random.default_rng``):

1. the number of distinct classes ``m`` uniformly in ``[min_classes, max_classes]`` (default
   1 to 4, capped at the number of tiles and of classes);
2. ``m`` distinct classes uniformly; the first ``m`` tiles take one each, the other tiles
   take one of the ``m`` uniformly (so exactly those ``m`` classes are present); the tile
   positions are then shuffled;
3. each tile's image: the next unused image of its class in a shuffled pass over that class's
   images (a new shuffled pass when one is used up), so images are used evenly.

With 10 classes and 1-4 distinct classes per mosaic, each label is present in 25% of the
mosaics on average. Tiles are stored as indices into the split's *pool* of source images, so
a split costs ``4 * N`` integers, and mosaics are composed when read (:func:`compose`, or in
the ``tf.data`` pipelines below).

Splits (:func:`make_mosaic_splits`):

* ``train``: ``num_train`` mosaics from the source's train images, minus the held-out ones;
* ``val``: ``num_val`` mosaics from ``val_images`` source train images held out per class
  in proportion (disjoint from the train pool: model selection and threshold tuning never
  see a training image);
* ``test``: ``num_test`` mosaics made only from the source's test images.

Each split has its own random stream (``default_rng([seed, split number])``; the held-out
choice has its own too), so changing ``num_train`` leaves the val and test mosaics as they
were. The same source arrays, options and seed give the same mosaics. Generation is index
arithmetic (milliseconds for tens of thousands of mosaics); loading the source split is
what takes time.

Datasets by name (:func:`get_mosaic_dataset`): ``mosaic:<name>`` for any registered
classification dataset ``<name>`` with ``train`` and ``test`` splits (``mosaic:cifar10``,
``mosaic:digits`` for tests), and ``cifar10_mosaic`` for ``mosaic:cifar10``.

Pipelines: :func:`make_train_iterator` (infinite, shuffled, augmented with ``pp``, the batch
at step ``k`` a function of ``(seed, k)`` as in ``pipeline.make_train_iterator``) and
:func:`make_eval_iterator` (every mosaic once, padded, with ``mask``). Batches:
``{'image': float32 [B, H', W', C'] (after pp), 'label': float32 [B, K] multi-hot}``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import numpy as np

ALIASES = {"cifar10_mosaic": "mosaic:cifar10"}
PREFIX = "mosaic:"
SPLITS = ("train", "val", "test")
# Options and their defaults (config.mosaic may set any of them).
DEFAULTS = {"grid": 2, "min_classes": 1, "max_classes": 4, "num_train": 20000,
            "num_val": 2000, "num_test": 2500, "val_images": 5000, "seed": 0}


@dataclasses.dataclass(frozen=True)
class MosaicSplit:
  """One split of mosaics.

  Attributes:
    pool: uint8 ``[P, h, w, C]``: the source images the tiles come from.
    pool_labels: int ``[P]``: their classes.
    pool_ids: int64 ``[P]``: their positions in the source split ``source_split``.
    source_split: the source dataset's split of the pool (``'train'`` or ``'test'``).
    tiles: int32 ``[N, grid * grid]``: each mosaic's tiles as pool indices, row-major.
    labels: uint8 ``[N, K]``: each mosaic's label set, multi-hot.
    grid: tiles per side.
  """
  pool: np.ndarray
  pool_labels: np.ndarray
  pool_ids: np.ndarray
  source_split: str
  tiles: np.ndarray
  labels: np.ndarray
  grid: int

  def __len__(self) -> int:
    return len(self.tiles)

  def images(self, index=None) -> np.ndarray:
    """uint8 ``[n, grid * h, grid * w, C]``: the mosaics ``index`` (default all)."""
    tiles = self.tiles if index is None else self.tiles[index]
    return compose(self.pool, np.atleast_2d(tiles), self.grid)


@dataclasses.dataclass(frozen=True)
class MosaicDataset:
  """A mosaic dataset: its ``name``, ``source`` (in words), ``class_names``, the mosaics'
  ``image_shape`` ``(H, W, C)``, the ``splits`` and the ``options`` that made them."""
  name: str
  source: str
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]
  splits: Mapping[str, MosaicSplit]
  options: Mapping[str, int]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_examples(self) -> dict[str, int]:
    return {name: len(split) for name, split in self.splits.items()}

  def split(self, name: str) -> MosaicSplit:
    if name not in self.splits:
      raise ValueError(f"mosaic dataset {self.name!r} has splits {sorted(self.splits)}; found "
                       f"{name!r}")
    return self.splits[name]


def compose(pool: np.ndarray, tiles: np.ndarray, grid: int) -> np.ndarray:
  """Pastes ``pool[tiles]`` edge to edge: ``tiles`` int ``[N, grid * grid]`` (row-major) ->
  ``[N, grid * h, grid * w, C]`` of ``pool``'s dtype (``pool``: ``[P, h, w, C]``)."""
  tiles = np.asarray(tiles)
  if tiles.ndim != 2 or tiles.shape[1] != grid * grid:
    raise ValueError(f"expected tiles [N, {grid * grid}] (grid {grid}); found {tiles.shape}")
  n, (h, w, c) = len(tiles), pool.shape[1:]
  x = pool[tiles].reshape(n, grid, grid, h, w, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, grid * h, grid * w, c)


def draw_tiles(pool_labels: np.ndarray, num_mosaics: int, *, num_classes: int, grid: int = 2,
               min_classes: int = 1, max_classes: int = 4,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Draws ``num_mosaics`` mosaics over a pool of labelled images (see the module docstring).

  Args:
    pool_labels: int ``[P]`` classes of the pool's images (in ``[0, num_classes)``).
    num_mosaics: ``N``.
    num_classes: ``K``.
    grid: tiles per side (``T = grid * grid`` tiles).
    min_classes, max_classes: the range of distinct classes per mosaic (capped at ``T`` and
      at the number of classes that have images in the pool).
    rng: the random stream.

  Returns:
    ``(tiles int32 [N, T], labels uint8 [N, K])``: pool indices, row-major, and the label
    set (the classes of the tiles).

  Raises:
    ValueError: bad sizes, or a pool without images.
  """
  pool_labels = np.asarray(pool_labels)
  t = grid * grid
  present = np.unique(pool_labels)
  if grid < 1 or num_mosaics < 0 or not len(present):
    raise ValueError(f"expected grid >= 1, num_mosaics >= 0 and a non-empty pool; found grid "
                     f"{grid}, num_mosaics {num_mosaics}, {len(pool_labels)} pool images")
  if present[0] < 0 or present[-1] >= num_classes:
    raise ValueError(f"pool labels must be in [0, {num_classes}); found [{present[0]}, "
                     f"{present[-1]}]")
  high = min(max_classes, t, len(present))
  if not 1 <= min_classes <= high:
    raise ValueError(f"expected 1 <= min_classes <= max_classes (at most {t} tiles and "
                     f"{len(present)} classes); found min_classes {min_classes}, max_classes "
                     f"{max_classes}")
  n = num_mosaics
  m = rng.integers(min_classes, high + 1, size=n)                              # [N]
  chosen = present[np.argsort(rng.random((n, len(present))), axis=1)[:, :high]]  # [N, high]
  slot = np.where(np.arange(t)[None, :] < m[:, None], np.arange(t)[None, :],
                  np.floor(rng.random((n, t)) * m[:, None]).astype(np.int64))     # [N, T]
  slot = np.take_along_axis(slot, np.argsort(rng.random((n, t)), axis=1), axis=1)
  classes = np.take_along_axis(chosen, slot, axis=1)                           # [N, T]
  tiles = np.zeros(n * t, np.int64)
  flat = classes.reshape(-1)
  for c in present:
    where = np.flatnonzero(flat == c)
    members = np.flatnonzero(pool_labels == c)
    passes = -(-len(where) // len(members))
    order = np.concatenate([rng.permutation(members) for _ in range(passes)] or [members[:0]])
    tiles[where] = order[:len(where)]
  tiles = tiles.reshape(n, t).astype(np.int32)
  labels = np.zeros((n, num_classes), np.uint8)
  np.put_along_axis(labels, pool_labels[tiles].astype(np.int64), 1, axis=1)
  return tiles, labels


def hold_out(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
  """Indices of about ``count`` examples, each class in proportion to its size (stratified),
  sorted; the rest stay for training."""
  labels = np.asarray(labels)
  if not 0 <= count < len(labels):
    raise ValueError(f"expected 0 <= val_images < {len(labels)} (the source's train images); "
                     f"found {count}")
  picked = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    k = int(round(count * len(members) / len(labels)))
    picked.append(rng.permutation(members)[:k])
  return np.sort(np.concatenate(picked))


def options(**overrides) -> dict[str, int]:
  """:data:`DEFAULTS` with ``overrides`` (unknown keys are a ValueError naming the known)."""
  unknown = sorted(set(overrides) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"unknown mosaic option(s) {unknown}; known: {sorted(DEFAULTS)}")
  out = dict(DEFAULTS, **overrides)
  for key, value in out.items():
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool)):
      raise ValueError(f"mosaic option {key} must be an integer; found {value!r}")
  for key in ("num_train", "num_val", "num_test"):
    if out[key] < 1:
      raise ValueError(f"mosaic option {key} must be >= 1; found {out[key]}")
  return {k: int(v) for k, v in out.items()}


def make_mosaic_splits(train_images: np.ndarray, train_labels: np.ndarray,
                       test_images: np.ndarray, test_labels: np.ndarray, *, num_classes: int,
                       **overrides) -> dict[str, MosaicSplit]:
  """The ``train``, ``val`` and ``test`` mosaics of a source's arrays (module docstring).

  Args:
    train_images, test_images: ``[N, h, w, C]`` (uint8) of the source's train and test
      splits; train_labels, test_labels: int ``[N]``.
    num_classes: ``K``.
    **overrides: :data:`DEFAULTS` to change (``num_train``, ``seed``, ...).
  """
  opts = options(**overrides)
  train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
  val_ids = hold_out(train_labels, opts["val_images"], np.random.default_rng([opts["seed"], 9]))
  if opts["val_images"] and not len(val_ids):
    raise ValueError(f"val_images={opts['val_images']} holds out no image of "
                     f"{len(train_labels)}")
  train_ids = np.setdiff1d(np.arange(len(train_labels)), val_ids)
  pools = {"train": (train_images, train_labels, train_ids, "train"),
           "val": (train_images, train_labels, val_ids, "train"),
           "test": (test_images, test_labels, np.arange(len(test_labels)), "test")}
  splits = {}
  for number, name in enumerate(SPLITS):
    images, labels, ids, source_split = pools[name]
    rng = np.random.default_rng([opts["seed"], number])
    tiles, multi_hot = draw_tiles(
        labels[ids], opts[f"num_{name}"], num_classes=num_classes, grid=opts["grid"],
        min_classes=opts["min_classes"], max_classes=opts["max_classes"], rng=rng)
    splits[name] = MosaicSplit(pool=np.asarray(images)[ids], pool_labels=labels[ids],
                               pool_ids=ids.astype(np.int64), source_split=source_split,
                               tiles=tiles, labels=multi_hot, grid=opts["grid"])
  return splits


def resolve_name(name: str) -> str:
  """The source dataset of a mosaic dataset name (``'mosaic:cifar10'`` or
  ``'cifar10_mosaic'`` -> ``'cifar10'``)."""
  full = ALIASES.get(name, name)
  if not (isinstance(full, str) and full.startswith(PREFIX) and len(full) > len(PREFIX)):
    raise ValueError(f"expected a mosaic dataset name 'mosaic:<classification dataset>' (e.g. "
                     f"'mosaic:cifar10', 'mosaic:digits') or one of {sorted(ALIASES)}; found "
                     f"{name!r}")
  return full[len(PREFIX):]


def get_mosaic_dataset(name: str, *, data_dir: str | os.PathLike | None = None,
                       **overrides) -> MosaicDataset:
  """The mosaic dataset ``name`` (``'mosaic:<dataset>'`` or ``'cifar10_mosaic'``).

  The source is ``jaxvision.data.get_dataset(<dataset>, data_dir=data_dir)`` (its ``train``
  and ``test`` splits, decoded into memory); ``overrides`` change :data:`DEFAULTS`.

  Raises:
    ValueError: a name that is not a mosaic name, an unknown source, bad options.
    FileNotFoundError: the source's data is missing.
  """
  from jaxvision.data import datasets, pipeline  # TensorFlow: only when data is loaded

  base = resolve_name(name)
  opts = options(**overrides)  # bad options fail before any data is read
  builder, info = datasets.get_dataset(base, data_dir=data_dir)
  missing = [s for s in ("train", "test") if s not in info.num_examples]
  if missing:
    raise ValueError(f"mosaics need the source's train and test splits; dataset {base!r} has "
                     f"{sorted(info.num_examples)}")
  train = pipeline.load_split(builder, info, "train")
  test = pipeline.load_split(builder, info, "test")
  splits = make_mosaic_splits(*train, *test, num_classes=info.num_classes, **opts)
  h, w, c = info.image_shape
  g = opts["grid"]
  return MosaicDataset(
      name=f"{PREFIX}{base}", class_names=tuple(info.class_names),
      source=f"{g}x{g} mosaics of {info.source} (label set: the classes present)",
      image_shape=(g * h, g * w, c), splits=splits, options=opts)


# -- tf.data pipelines. -------------------------------------------------------------------------


def _example_fn(split: MosaicSplit, pp: str):
  """``fn({'tiles', 'label'}, rng) -> {'image': float32 (after pp), 'label': float32 [K]}``:
  the mosaic composed in the tf.data graph from the pool (a constant), then ``pp``."""
  import tensorflow as tf

  from jaxvision.data import preprocess

  pp_fn = preprocess.parse(pp)
  pool = tf.constant(split.pool)
  g = split.grid
  h, w, c = split.pool.shape[1:]

  def fn(example, rng):
    x = tf.reshape(tf.gather(pool, example["tiles"]), [g, g, h, w, c])
    x = tf.reshape(tf.transpose(x, [0, 2, 1, 3, 4]), [g * h, g * w, c])
    out = pp_fn({"image": x, "label": example["label"]}, rng)
    return {"image": tf.cast(out["image"], tf.float32),
            "label": tf.cast(out["label"], tf.float32)}

  return fn


def make_train_iterator(split: MosaicSplit, *, global_batch_size: int, pp: str, seed: int,
                        start_step: int = 0, process_index: int | None = None,
                        process_count: int | None = None):
  """Infinite host-local training batches of ``split`` (see ``pipeline.make_train_iterator``
  for the shuffling, resume and per-process rows): ``{'image', 'label' float32 [B, K]}``."""
  from jaxvision.data import pipeline

  return pipeline.make_array_train_iterator(
      {"tiles": split.tiles, "label": split.labels}, _example_fn(split, pp),
      global_batch_size=global_batch_size, seed=seed, start_step=start_step,
      process_index=process_index, process_count=process_count)


def make_eval_iterator(split: MosaicSplit, *, global_batch_size: int, pp: str,
                       process_index: int | None = None, process_count: int | None = None):
  """Every mosaic of ``split`` once, in order, the last batch padded (``mask`` False; see
  ``pipeline.make_eval_iterator``): ``{'image', 'label' float32 [B, K], 'mask' bool [B]}``."""
  from jaxvision.data import pipeline

  return pipeline.make_array_eval_iterator(
      {"tiles": split.tiles, "label": split.labels}, _example_fn(split, pp),
      global_batch_size=global_batch_size, process_index=process_index,
      process_count=process_count)


def split_summary(split: MosaicSplit) -> dict:
  """JSON facts of a split: mosaics, pool images and their source split, the distribution of
  distinct classes per mosaic and each label's frequency."""
  per_mosaic = split.labels.sum(1)
  return {"num_mosaics": len(split), "pool_images": len(split.pool),
          "source_split": split.source_split,
          "classes_per_mosaic": {int(k): int(v) for k, v in
                                 zip(*np.unique(per_mosaic, return_counts=True))},
          "label_frequency": [round(float(f), 4) for f in split.labels.mean(0)]}
