"""Deterministic host-local batch iterators over classification datasets.

Datasets come from ``jaxvision.data.get_dataset(name)`` (:mod:`jaxvision.data.datasets`), which
returns a prepared TFDS builder and its :class:`DatasetInfo`.

Iterators load the decoded split once into memory and drive a ``tf.data`` pipeline over
example indices:

* :func:`make_train_iterator`: infinite, shuffled per epoch (remainder dropped), augmented with
  stateless randomness. The batch at global step ``k`` is a function of ``(seed, k)`` only:
  epoch ``e = k // steps_per_epoch`` uses the permutation keyed by ``(seed, e)`` and the example
  at position ``j`` of global batch ``k`` is augmented with the key ``(seed, k, j)``. So
  ``start_step=K`` resumes exactly, and with ``process_count`` hosts process ``p`` yields rows
  ``[p * B_local, (p + 1) * B_local)`` of every global batch.
* :func:`make_eval_iterator`: one pass in order over every example, the last global batch
  zero-padded with ``mask`` False; every process yields the same number of batches.

:func:`make_array_train_iterator` / :func:`make_array_eval_iterator` do the same over any
in-memory examples (e.g. video frames) with a caller's per-example function.

Batches are dicts of NumPy arrays: ``image`` float32 ``[B_local, H', W', C']`` (the shape after
``pp``; the dtype is cast to float32 without rescaling), ``label`` int32 ``[B_local]``, and for
evaluation ``mask`` bool ``[B_local]``.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator, Mapping

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxvision.data import preprocess
from jaxvision.data.datasets import DatasetInfo

_MAX_EPOCHS = 2**40
# ``fn(example: dict of tf.Tensor, rng: int64 [2]) -> dict of tf.Tensor`` for one example.
ExampleFn = Callable[[dict, tf.Tensor], dict]


def split_size(info: DatasetInfo, split: str) -> int:
  """Number of examples in ``split``; TFDS slicing like ``'train[:90%]'`` is supported."""
  if split in info.num_examples:
    return info.num_examples[split]
  split_infos = {k: types.SimpleNamespace(num_examples=v) for k, v in info.num_examples.items()}
  try:
    instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(split_infos)
  except (ValueError, AttributeError, AssertionError) as e:
    raise ValueError(f"dataset {info.name!r}: bad split {split!r} ({e}); splits: "
                     f"{sorted(info.num_examples)}") from None
  total = 0
  for ins in instructions:
    n = info.num_examples[ins.splitname]
    total += (n if ins.to is None else ins.to) - (ins.from_ or 0)
  return total


def steps_per_epoch(info: DatasetInfo, split: str, global_batch_size: int) -> int:
  """``N // global_batch_size``: full global batches per epoch (the remainder is dropped)."""
  n = split_size(info, split)
  if global_batch_size <= 0:
    raise ValueError(f"global_batch_size must be > 0, got {global_batch_size}")
  steps = n // global_batch_size
  if steps == 0:
    raise ValueError(f"global_batch_size {global_batch_size} is larger than split {split!r} of "
                     f"dataset {info.name!r} ({n} examples)")
  return steps


def _local_batch(global_batch_size: int, process_index: int | None,
                 process_count: int | None) -> tuple[int, int, int]:
  """Returns ``(process_index, process_count, local_batch_size)`` after validation."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(f"bad process_index {process_index} for process_count {process_count}")
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of the "
                     f"process count {process_count}")
  return process_index, process_count, global_batch_size // process_count


def load_split(builder: tfds.core.DatasetBuilder, info: DatasetInfo,
                split: str) -> tuple[np.ndarray, np.ndarray]:
  """The decoded split in stored order: images ``[N, H, W, C]`` and int32 labels ``[N]``."""
  expected = split_size(info, split)
  ds = builder.as_dataset(split=split, batch_size=-1, shuffle_files=False)
  arrays = tfds.as_numpy(ds)
  images, labels = arrays["image"], arrays["label"].astype(np.int32)
  if len(labels) != expected:
    raise ValueError(f"dataset {info.name!r}: split {split!r} has {len(labels)} examples but its "
                     f"info says {expected}")
  return images, labels


def _base_key(seed: int) -> tf.Tensor:
  if not isinstance(seed, (int, np.integer)) or not -2**63 <= int(seed) < 2**63:
    raise ValueError(f"seed must be an int64, got {seed!r}")
  return tf.constant([0, int(seed)], tf.int64)


def _fold_in(key: tf.Tensor, data) -> tf.Tensor:
  return tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64),
                                                  alg=preprocess.RNG_ALG)


def _example_fn(pp: str):
  """Returns ``fn(example, rng) -> {'image': float32, 'label': int32}`` applying ``pp``."""
  pp_fn = preprocess.parse(pp)

  def fn(example, rng):
    out = pp_fn(example, rng)
    return {"image": tf.cast(out["image"], tf.float32), "label": tf.cast(out["label"], tf.int32)}

  return fn


def _gather_fn(arrays: Mapping[str, np.ndarray], example_fn: ExampleFn):
  """Returns ``fn(index, rng) = example_fn({k: arrays[k][index]}, rng)`` over TF constants."""
  lengths = {k: len(v) for k, v in arrays.items()}
  if not arrays or len(set(lengths.values())) != 1:
    raise ValueError(f"arrays must be a non-empty dict of equally long arrays; found lengths "
                     f"{lengths}")
  tensors = {k: tf.constant(v) for k, v in arrays.items()}

  def fn(index, rng):
    return example_fn({k: tf.gather(t, index) for k, t in tensors.items()}, rng)

  return fn, next(iter(lengths.values()))


def _numpy_iterator(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  options = tf.data.Options()
  options.deterministic = True
  return iter(tfds.as_numpy(ds.with_options(options)))


def make_train_iterator(builder: tfds.core.DatasetBuilder, info: DatasetInfo, *, split: str,
                        global_batch_size: int, pp: str, seed: int, start_step: int = 0,
                        process_index: int | None = None, process_count: int | None = None,
                        labels: np.ndarray | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Infinite iterator of this host's training batches (see the module docstring).

  Args:
    builder, info: from ``jaxvision.data.get_dataset``.
    split: split name (TFDS slicing allowed, e.g. ``'train[:90%]'``).
    global_batch_size: batch size over all processes; a multiple of ``process_count``.
    pp: preprocessing spec (``preprocess.parse``), e.g. ``'random_crop(28, pad=2)|value_range(0, 1)'``.
    seed: int64 seed of the shuffling and augmentation.
    start_step: global step of the first batch (resume): the iterator yields exactly what an
      uninterrupted one yields from its ``start_step``-th batch, without replaying earlier ones.
    process_index, process_count: default ``jax.process_index()`` / ``jax.process_count()``.
    labels: int ``[N]`` replacing the split's labels in stored order (e.g. the cluster ids of
      a self-conditioned GAN); the images and their order are unchanged.

  Yields:
    ``{'image': float32 [B_local, H', W', C'], 'label': int32 [B_local]}`` with
    ``B_local = global_batch_size // process_count``.
  """
  _local_batch(global_batch_size, process_index, process_count)
  steps_per_epoch(info, split, global_batch_size)
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  images, split_labels = load_split(builder, info, split)
  if labels is None:
    labels = split_labels
  elif np.shape(labels) != split_labels.shape or not np.issubdtype(np.asarray(labels).dtype,
                                                                   np.integer):
    raise ValueError(f"labels must be integers of shape {split_labels.shape} (one per example "
                     f"of split {split!r}); found {np.asarray(labels).dtype} {np.shape(labels)}")
  return make_array_train_iterator(
      {"image": images, "label": np.asarray(labels, np.int32)}, _example_fn(pp),
      global_batch_size=global_batch_size, seed=seed, start_step=start_step,
      process_index=process_index, process_count=process_count)


def make_array_train_iterator(arrays: Mapping[str, np.ndarray], example_fn: ExampleFn, *,
                              global_batch_size: int, seed: int, start_step: int = 0,
                              process_index: int | None = None,
                              process_count: int | None = None
                              ) -> Iterator[dict[str, np.ndarray]]:
  """:func:`make_train_iterator` over in-memory examples (any features, e.g. video frames).

  Args:
    arrays: the examples, stacked along axis 0 (all of the same length ``N``).
    example_fn: ``fn(example, rng) -> dict`` of TF tensors, called in the tf.data graph with
      one example ``{k: arrays[k][i]}`` and its stateless seed ``rng`` (int64 ``[2]``,
      a function of ``(seed, step, position in the global batch)``).
    global_batch_size, seed, start_step, process_index, process_count: as in
      :func:`make_train_iterator` (same shuffling, resume and per-process rows).

  Yields:
    ``example_fn``'s outputs batched to ``[B_local, ...]`` NumPy arrays.
  """
  p, _, local = _local_batch(global_batch_size, process_index, process_count)
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  example, n = _gather_fn(arrays, example_fn)
  spe = n // global_batch_size
  if spe == 0:
    raise ValueError(f"global_batch_size {global_batch_size} is larger than the {n} examples")
  key = _base_key(seed)
  perm_key, aug_key = _fold_in(key, 0), _fold_in(key, 1)

  def epoch_elements(epoch):
    # One shuffled epoch as (global step, position in the global batch, example index).
    perm = tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64), seed=_fold_in(perm_key, epoch), alg=preprocess.RNG_ALG)
    rows = tf.reshape(perm[:spe * global_batch_size], [spe, global_batch_size])
    index = rows[:, p * local:(p + 1) * local]                                  # [spe, local]
    step = epoch * spe + tf.range(spe, dtype=tf.int64)[:, None] + tf.zeros_like(index)
    pos = p * local + tf.range(local, dtype=tf.int64)[None, :] + tf.zeros_like(index)
    return tf.data.Dataset.from_tensor_slices(
        tuple(tf.reshape(t, [-1]) for t in (step, pos, index)))

  def load(step, pos, index):
    return example(index, _fold_in(_fold_in(aug_key, step), pos))

  start_epoch, offset = divmod(start_step, spe)
  ds = tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(epoch_elements)
  ds = ds.skip(offset * local)
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return _numpy_iterator(ds)


class EvalIterable:
  """Re-iterable evaluation batches: ``len()`` batches per pass, each pass in the same order."""

  def __init__(self, make_dataset, num_batches: int, num_examples: int):
    self._make_dataset = make_dataset
    self.num_batches = num_batches
    self.num_examples = num_examples

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return _numpy_iterator(self._make_dataset())


def make_eval_iterator(builder: tfds.core.DatasetBuilder, info: DatasetInfo, *, split: str,
                       global_batch_size: int, pp: str, process_index: int | None = None,
                       process_count: int | None = None) -> EvalIterable:
  """Batches visiting every example of ``split`` exactly once over all processes.

  There are ``ceil(N / global_batch_size)`` global batches, the same for every process; process
  ``p`` gets rows ``[p * B_local, (p + 1) * B_local)`` of each. Padding rows (past the end of the
  split) have zero ``image`` and ``label`` and ``mask`` False. ``pp`` is applied with a per-example
  fixed rng, so even a random op gives the same result on every pass.

  Yields (per iteration of the returned iterable):
    ``{'image': float32 [B_local, ...], 'label': int32 [B_local], 'mask': bool [B_local]}``.
  """
  _local_batch(global_batch_size, process_index, process_count)
  images, labels = load_split(builder, info, split)
  if len(labels) == 0:
    raise ValueError(f"split {split!r} of dataset {info.name!r} is empty")
  return make_array_eval_iterator({"image": images, "label": labels}, _example_fn(pp),
                                  global_batch_size=global_batch_size,
                                  process_index=process_index, process_count=process_count)


def make_array_eval_iterator(arrays: Mapping[str, np.ndarray], example_fn: ExampleFn, *,
                             global_batch_size: int, process_index: int | None = None,
                             process_count: int | None = None) -> EvalIterable:
  """:func:`make_eval_iterator` over in-memory examples (see :func:`make_array_train_iterator`).

  Every output of ``example_fn`` is zero in padding rows, and ``mask`` marks the real ones.
  """
  p, _, local = _local_batch(global_batch_size, process_index, process_count)
  example, n = _gather_fn(arrays, example_fn)
  if n == 0:
    raise ValueError("no examples to evaluate")
  num_batches = -(-n // global_batch_size)
  # Global position of each of this process's rows: [num_batches * local].
  batch_start = np.arange(num_batches, dtype=np.int64)[:, None] * global_batch_size
  positions = (batch_start + p * local + np.arange(local, dtype=np.int64)[None, :]).reshape(-1)
  key = _fold_in(_base_key(0), 2)

  def load(position):
    valid = position < n
    out = example(tf.minimum(position, n - 1), _fold_in(key, position))
    out = {k: tf.where(valid, v, tf.zeros_like(v)) for k, v in out.items()}
    out["mask"] = valid
    return out

  def make_dataset():
    ds = tf.data.Dataset.from_tensor_slices(positions)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

  return EvalIterable(make_dataset, num_batches, n)
