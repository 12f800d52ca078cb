"""Embeddings at scale: a jitted, batch-sharded embed step over a dataset or image files.

>>> from jaxvision.apps import embed
>>> e = embed.make_embedder("EfficientNetLite0", pp="resize(112)|value_range(-0.9921875, 1)")
>>> embed.embed_dataset(e, "cifar10", "test", "stores/cifar10-test", batch_size=256,
...                     chunk_size=4096)                 # resumable after a kill
>>> q = embed.embed_files(e.for_store(store.read_meta("stores/cifar10-test")), ["cat.jpg"])

An :class:`Embedder` maps images to feature vectors ``[N, D]`` float32. Three kinds:

* ``pretrained``: a model's ImageNet weights (``models.pretrained_variables``), its
  ``pre_logits`` (EfficientNetLite0: 1280-d), with the model's own preprocessing or a ``pp``
  override (e.g. ``'resize(112)|value_range(-0.9921875, 1)'`` for 32 px CIFAR-10 images).
* ``workdir``: a trained classification workdir's ``pre_logits`` with its ``pp_eval``.
* ``pixels``: the flattened preprocessed image itself (the floor for search quality).

The embed step is ``jax.jit`` over the device mesh exactly like the train steps
(``training.jit.jit_eval_step``): a 1-D ``'data'`` mesh, the batch sharded over it, the
variables replicated, host-local batches made global with
``jax.make_array_from_process_local_data`` (``training.sharding.shard_batch``), so the same
code runs on one CPU, 8 forced host devices, a GPU or several hosts. The padded rows of the
last batch (``mask`` False) are zeroed in the step and dropped on the host.

:func:`embed_dataset` and :func:`embed_folder` write an ``apps.store`` chunk by chunk (a
progress bar on stderr); chunks already written are skipped, so a killed run resumes where
it stopped and its store equals an uninterrupted run's bit for bit (every chunk is embedded
by the same compiled step on the same padded batches either way).

The store's ``meta.json`` records ``model`` (the identity string, :attr:`Embedder.model`),
``embedder`` (the spec :meth:`Embedder.from_spec` rebuilds it from, so query images are
embedded exactly like the gallery), ``preprocessing``, ``dataset``, ``split``,
``class_names`` (or ``files`` for a folder), ``images_per_s``.

TensorFlow (input pipelines, image decoding) is imported when first needed, not at import.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.apps import store as store_lib
from jaxvision.training import jit as jit_lib
from jaxvision.training import sharding

PIXELS = "pixels"
PIXELS_PP = "value_range(-1, 1)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp")


# ``features_fn(variables, images float32 [B, H, W, C]) -> float32 [B, D]``.
FeaturesFn = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Embedder:
  """Images to feature vectors.

  Attributes:
    features_fn: ``fn(variables, images float32 [B, H', W', C']) -> float32 [B, D]`` on
      preprocessed images (pure, jittable; knows nothing of devices).
    variables: the model's variables (``{}`` for pixels).
    pp: the evaluation preprocessing spec from stored uint8 images to model inputs.
    image_shape: ``(H, W, C)`` of the stored images ``pp`` expects (image files are decoded
      with ``C`` channels and resized to ``H x W`` first), or ``(None, None, C)``: any size.
    model: the identity string written to stores and indexes (``'EfficientNetLite0@imagenet'``,
      ``'SimpleCNN@/runs/x:best#step300'``, ``'pixels'``), with ``'+pp=<spec>'`` appended when
      ``pp`` is not the kind's default.
    spec: JSON dict :meth:`from_spec` rebuilds this embedder from (None: not rebuildable).
  """
  features_fn: FeaturesFn
  variables: Any
  pp: str
  image_shape: tuple
  model: str
  spec: dict | None = None

  # -- Construction. ----------------------------------------------------------------------------

  @classmethod
  def pretrained(cls, name: str, *, pp: str | None = None,
                 cache_dir: str | os.PathLike | None = None) -> Embedder:
    """``name``'s ImageNet weights (``pre_logits``), preprocessing ``pp`` or the model's own."""
    from jaxvision import models  # pylint: disable=g-import-not-at-top
    spec = models.pretrained.get_spec(name)
    model = models.create_model(name, num_classes=spec.num_classes)
    variables, _ = models.pretrained_variables(name, cache_dir=cache_dir)
    default = spec.preprocessing
    pp = default if pp is None else pp
    return cls(_pre_logits(model.apply), variables, pp, (None, None, 3),
               _identity(f"{name}@imagenet", pp, default),
               {"kind": "pretrained", "name": name, "pp": pp, "image_shape": [None, None, 3]})

  @classmethod
  def from_workdir(cls, workdir: str | os.PathLike, *, checkpoint: str = "best",
                   pp: str | None = None) -> Embedder:
    """A trained classification workdir's ``pre_logits`` (its ``pp_eval`` unless ``pp``)."""
    from jaxvision import inference  # pylint: disable=g-import-not-at-top
    workdir = pathlib.Path(workdir).resolve()
    clf = inference.load_classifier(workdir, checkpoint=checkpoint)
    meta = clf.meta
    default = meta["pp_eval"]
    pp = default if pp is None else pp
    shape = tuple(meta["dataset_image_shape"])
    base = f"{meta.get('model', 'model')}@{workdir}:{checkpoint}#step{meta['checkpoint_step']}"
    return cls(_pre_logits(clf.apply_fn), clf.variables, pp, shape, _identity(base, pp, default),
               {"kind": "workdir", "workdir": str(workdir), "checkpoint": checkpoint, "pp": pp,
                "image_shape": list(shape)})

  @classmethod
  def pixels(cls, *, pp: str = PIXELS_PP, image_shape: Sequence = (None, None, 3)) -> Embedder:
    """The flattened preprocessed image, float32 ``[B, H' * W' * C']``."""
    return cls(_flatten, {}, pp, tuple(image_shape), _identity(PIXELS, pp, PIXELS_PP),
               {"kind": PIXELS, "pp": pp, "image_shape": list(image_shape)})

  @classmethod
  def from_module(cls, module, variables, *, pp: str, image_shape: Sequence,
                  model: str) -> Embedder:
    """Any classifier module returning ``(logits, {'pre_logits': [B, D]})`` with its
    variables (not rebuildable from a store's meta: pass it to the functions yourself)."""
    return cls(_pre_logits(module.apply), variables, pp, tuple(image_shape), model, None)

  @classmethod
  def from_spec(cls, spec: Mapping) -> Embedder:
    """Rebuilds an embedder from its :attr:`spec` (e.g. a store's ``meta['embedder']``)."""
    if not isinstance(spec, Mapping) or spec.get("kind") not in ("pretrained", "workdir",
                                                                  PIXELS):
      raise ValueError(f"expected an embedder spec with kind pretrained, workdir or pixels; "
                       f"found {spec!r} (a store written by a custom embedder cannot embed "
                       "query images by itself)")
    shape = tuple(spec.get("image_shape") or (None, None, 3))
    if spec["kind"] == "pretrained":
      e = cls.pretrained(spec["name"], pp=spec["pp"])
    elif spec["kind"] == "workdir":
      e = cls.from_workdir(spec["workdir"], checkpoint=spec.get("checkpoint", "best"),
                           pp=spec["pp"])
    else:
      e = cls.pixels(pp=spec["pp"], image_shape=shape)
    return e.with_image_shape(shape)

  @classmethod
  def for_store(cls, meta: Mapping) -> Embedder:
    """The embedder that wrote the store (or index) with this ``meta``, checked to be it."""
    e = cls.from_spec(meta.get("embedder"))
    if e.model != meta.get("model"):
      raise ValueError(f"the embedder rebuilt from the store's spec is {e.model!r}; the store "
                       f"holds embeddings of {meta.get('model')!r} (was the workdir retrained?)")
    return e

  def with_image_shape(self, image_shape: Sequence) -> Embedder:
    """This embedder reading stored images of ``image_shape`` (e.g. a dataset's)."""
    shape = tuple(None if s is None else int(s) for s in image_shape)
    spec = None if self.spec is None else dict(self.spec, image_shape=list(shape))
    return dataclasses.replace(self, image_shape=shape, spec=spec)

  def for_dataset(self, info) -> Embedder:
    """This embedder on a dataset's stored images (``info``: ``data.DatasetInfo``).

    Raises:
      ValueError: the embedder reads images of a fixed shape other than the dataset's.
    """
    own = self.image_shape
    if own[0] is not None and tuple(own) != tuple(info.image_shape):
      raise ValueError(f"embedder {self.model!r} reads stored images of shape {tuple(own)}; "
                       f"dataset {info.name!r} has {tuple(info.image_shape)}")
    return self.with_image_shape(info.image_shape)

  # -- Use. -------------------------------------------------------------------------------------

  def output_dim(self, input_shape: Sequence[int]) -> int:
    """``D`` for preprocessed inputs of shape ``(H', W', C')``; a ValueError naming the model
    and the shape when it cannot take them."""
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    try:
      out = jax.eval_shape(self.features_fn, self.variables, x)
    except Exception as e:  # a shape error from deep inside the model: one line instead
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise ValueError(f"embedder {self.model!r} cannot take preprocessed images of shape "
                       f"{tuple(input_shape)} (pp {self.pp!r}): {first[:200]}") from None
    if len(out.shape) != 2:
      raise ValueError(f"embedder {self.model!r}: expected features [B, D]; found {out.shape}")
    return int(out.shape[1])

  def preprocess(self, images: np.ndarray) -> np.ndarray:
    """Stored-format uint8 images ``[N, H, W, C]`` through :attr:`pp`: float32 ``[N, ...]``."""
    from jaxvision.data import images as image_io  # pylint: disable=g-import-not-at-top
    return image_io.preprocess_images(images, pp=self.pp)

  def load_files(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """Image files decoded, resized to :attr:`image_shape` (when fixed) and preprocessed:
    float32 ``[N, H', W', C']``. An unreadable file is a one-line ValueError naming it."""
    from jaxvision.data import images as image_io  # pylint: disable=g-import-not-at-top
    paths = [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike))
                                    else paths)]
    if not paths:
      raise ValueError("no image files given")
    for path in paths:
      if not os.path.isfile(path):
        raise ValueError(f"cannot read image {path}: no such file")
    try:
      return image_io.load_images(paths, image_shape=self.image_shape, pp=self.pp)
    except FileNotFoundError as e:
      raise ValueError(str(e)) from None


def _identity(base: str, pp: str, default: str) -> str:
  return base if pp == default else f"{base}+pp={pp}"


def _pre_logits(apply_fn) -> FeaturesFn:
  def fn(variables, x):
    _, out = apply_fn(variables, x, train=False)
    return out["pre_logits"].astype(jnp.float32)
  return fn


def _flatten(variables, x):
  del variables
  return x.reshape(x.shape[0], -1).astype(jnp.float32)


def make_embedder(name: str, *, pp: str | None = None,
                  checkpoint: str = "best") -> Embedder:
  """``'pixels'``, a model with pretrained weights (``'EfficientNetLite0'``), or a trained
  classification workdir (an existing folder), as an :class:`Embedder`."""
  if name == PIXELS:
    return Embedder.pixels(pp=PIXELS_PP if pp is None else pp)
  if os.path.isdir(name):
    return Embedder.from_workdir(name, checkpoint=checkpoint, pp=pp)
  from jaxvision.models import pretrained  # pylint: disable=g-import-not-at-top
  if name not in pretrained.PRETRAINED:
    raise ValueError(f"expected 'pixels', a model with pretrained weights "
                     f"({', '.join(sorted(pretrained.PRETRAINED))}) or a classification "
                     f"workdir; found {name!r}")
  return Embedder.pretrained(name, pp=pp)


# -- The sharded embed step. ----------------------------------------------------------------------


def make_embed_step(embedder: Embedder, mesh):
  """``step(variables, batch) -> {'embedding': float32 [B, D], 'mask': bool [B]}``, jitted
  over ``mesh`` like the eval steps: ``batch`` (``image`` float32 ``[B, H', W', C']``,
  ``mask`` bool ``[B]``) sharded over ``'data'``, the variables and outputs replicated.
  Rows with ``mask`` False are zero."""
  def step(variables, batch):
    feats = embedder.features_fn(variables, batch["image"])
    return {"embedding": jnp.where(batch["mask"][:, None], feats, 0.0), "mask": batch["mask"]}
  return jit_lib.jit_eval_step(step, mesh)


class _Runner:
  """The compiled step, the replicated variables and the mesh, made once per embed run."""

  def __init__(self, embedder: Embedder, *, batch_size: int, num_devices: int | None = None,
               mesh=None):
    self.mesh = mesh if mesh is not None else sharding.make_mesh(num_devices)
    sharding.check_batch_size(batch_size, self.mesh)
    self.batch_size = batch_size
    self.local = batch_size // jax.process_count()
    self.variables = jax.device_put(embedder.variables, sharding.replicated(self.mesh))
    self.step = make_embed_step(embedder, self.mesh)

  def run(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """One host-local batch -> the global batch's real rows, float32 ``[n, D]`` (in order)."""
    out = self.step(self.variables, sharding.shard_batch(batch, self.mesh))
    out = jax.device_get(out)
    return np.asarray(out["embedding"])[np.asarray(out["mask"])]

  def array_batches(self, x: np.ndarray):
    """This host's share of ``x [n, ...]`` (the same on every host) in padded global batches."""
    p = jax.process_index()
    for start in range(0, len(x), self.batch_size):
      rows = np.arange(start + p * self.local, start + (p + 1) * self.local)
      valid = rows < len(x)
      image = np.zeros((self.local, *x.shape[1:]), np.float32)
      image[valid] = x[rows[valid]]
      yield {"image": image, "mask": valid}

  def embed_array(self, x: np.ndarray) -> np.ndarray:
    return np.concatenate([self.run(b) for b in self.array_batches(x)])


def embed_arrays(embedder: Embedder, images: np.ndarray, *, batch_size: int | None = None,
                 num_devices: int | None = None, preprocessed: bool = False) -> np.ndarray:
  """Features float32 ``[N, D]`` (not normalised) of stored-format images ``[N, H, W, C]``
  (or of model inputs with ``preprocessed=True``) through the sharded step."""
  x = np.asarray(images, np.float32) if preprocessed else embedder.preprocess(images)
  mesh = sharding.make_mesh(num_devices)
  if batch_size is None:  # the smallest multiple of the mesh size holding every image
    batch_size = -(-len(x) // mesh.devices.size) * mesh.devices.size
  return _Runner(embedder, batch_size=batch_size, mesh=mesh).embed_array(x)


def embed_files(embedder: Embedder, paths: Sequence[str | os.PathLike], *,
                batch_size: int | None = None, num_devices: int | None = None) -> np.ndarray:
  """Query images: L2-normalised float32 ``[N, D]`` embeddings of image files.

  Files are decoded, resized to ``embedder.image_shape`` when it is fixed (so a query goes
  through the same path as the gallery's stored images) and preprocessed with
  ``embedder.pp``. An unreadable or missing file is a one-line ValueError naming it.
  """
  x = embedder.load_files(paths)
  return store_lib.l2_normalize(embed_arrays(embedder, x, batch_size=batch_size,
                                             num_devices=num_devices, preprocessed=True))


# -- Writing stores. -------------------------------------------------------------------------------


def _check_sizes(batch_size: int, chunk_size: int):
  for name, v in (("batch_size", batch_size), ("chunk_size", chunk_size)):
    if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1):
      raise ValueError(f"{name} must be a positive integer; found {v!r}")


def _write_chunks(writer: store_lib.StoreWriter, embed_chunk, *, labels: np.ndarray,
                  on_chunk: Callable[[int], None] | None, progress: bool) -> dict:
  """Embeds and writes every missing chunk; returns timing figures."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  missing = writer.missing_chunks()
  n = writer.meta["num_examples"]
  done = n - sum(stop - start for start, stop in map(writer.chunk_range, missing))
  bar = tqdm(total=n, initial=done, unit="img", file=sys.stderr, desc="embed",
             disable=not progress or jax.process_index() != 0, dynamic_ncols=True)
  embedded, seconds, first_s = 0, 0.0, None
  try:
    for i in missing:
      start, stop = writer.chunk_range(i)
      t0 = time.perf_counter()
      vectors = embed_chunk(start, stop)
      dt = time.perf_counter() - t0
      first_s = dt if first_s is None else first_s
      seconds += dt
      embedded += stop - start
      if jax.process_index() == 0:
        writer.write_chunk(i, np.arange(start, stop), labels[start:stop], vectors)
      bar.update(stop - start)
      if on_chunk is not None:
        on_chunk(i)
  finally:
    bar.close()
  return {"embedded_now": embedded, "embed_seconds": seconds,
          "images_per_s": embedded / seconds if seconds > 0 else None}


def _finish(writer: store_lib.StoreWriter, timing: dict, progress: bool) -> dict:
  meta = writer.finish() if jax.process_index() == 0 else dict(writer.meta, complete=True)
  if progress and timing["images_per_s"] is not None:
    print(f"embedded {timing['embedded_now']} images in {timing['embed_seconds']:.1f} s: "
          f"{timing['images_per_s']:.1f} images/s ({meta['model']}, {jax.device_count()} "
          f"{jax.devices()[0].platform} devices)", file=sys.stderr)
  return {**meta, **timing}


def embed_dataset(embedder: Embedder, dataset: str, split: str, out_dir: str | os.PathLike, *,
                  batch_size: int = 256, chunk_size: int = 4096, num_devices: int | None = None,
                  data_dir: str | os.PathLike | None = None, overwrite: bool = False,
                  on_chunk: Callable[[int], None] | None = None, progress: bool = True) -> dict:
  """Embeds every image of ``dataset``'s ``split`` into the store ``out_dir``.

  Ids are the positions in the split, labels its int32 class ids, vectors the L2-normalised
  embeddings. Chunk ``i`` holds positions ``[i * chunk_size, (i + 1) * chunk_size)``; each is
  fed through ``pipeline.make_array_eval_iterator`` in global batches of ``batch_size``
  (the last one padded and masked) and written atomically. Chunks already in ``out_dir``
  (a killed run of the same embedder, dataset, split and sizes) are skipped.

  Args:
    embedder: an :class:`Embedder`; dataset: a registered dataset name; split: a split.
    batch_size: global batch size, a multiple of the devices (and processes).
    chunk_size: examples per store chunk.
    num_devices: mesh size (default: all devices).
    data_dir: the dataset's local folder (``data.get_dataset``).
    overwrite: start ``out_dir`` over instead of resuming it.
    on_chunk: called with each chunk's index after it is written (progress hooks, tests).
    progress: a tqdm bar and the images/s line on stderr.

  Several hosts: every process calls this with the same arguments and ``out_dir`` on a
  filesystem they all see; each feeds its rows of every batch, process 0 writes the chunks.

  Returns:
    The store's meta plus ``embedded_now`` (images embedded by this call),
    ``embed_seconds`` and ``images_per_s`` (None when nothing was left to embed).
  """
  from jaxvision import data  # pylint: disable=g-import-not-at-top
  from jaxvision.data import pipeline  # pylint: disable=g-import-not-at-top
  _check_sizes(batch_size, chunk_size)
  builder, info = data.get_dataset(dataset, data_dir=data_dir)
  embedder = embedder.for_dataset(info)
  n = pipeline.split_size(info, split)
  if n == 0:
    raise ValueError(f"split {split!r} of dataset {dataset!r} is empty: an empty gallery")
  runner = _Runner(embedder, batch_size=batch_size, num_devices=num_devices)
  images, labels = pipeline.load_split(builder, info, split)
  example = embedder.preprocess(images[:1])
  dim = embedder.output_dim(example.shape[1:])
  writer = store_lib.StoreWriter(
      out_dir, model=embedder.model, dim=dim, num_examples=n, chunk_size=chunk_size,
      overwrite=overwrite, dataset=dataset, split=split, source=info.source,
      class_names=list(info.class_names), preprocessing=embedder.pp,
      image_shape=list(info.image_shape), embedder=embedder.spec)
  example_fn = _example_fn(embedder.pp)

  def embed_chunk(start, stop):
    batches = pipeline.make_array_eval_iterator(
        {"image": images[start:stop]}, example_fn, global_batch_size=batch_size)
    return np.concatenate([runner.run(b) for b in batches])

  timing = _write_chunks(writer, embed_chunk, labels=labels.astype(np.int32),
                         on_chunk=on_chunk, progress=progress)
  return _finish(writer, timing, progress)


def _example_fn(pp: str):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jaxvision.data import preprocess  # pylint: disable=g-import-not-at-top
  pp_fn = preprocess.parse(pp)

  def fn(example, rng):
    return {"image": tf.cast(pp_fn(example, rng)["image"], tf.float32)}

  return fn


def image_files(folder: str | os.PathLike) -> list[pathlib.Path]:
  """The image files (``.png .jpg .jpeg .gif .bmp``) below ``folder``, sorted by path."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise ValueError(f"expected a folder of images; {folder} is not a folder")
  files = sorted(p for p in folder.rglob("*") if p.is_file()
                 and p.suffix.lower() in IMAGE_SUFFIXES)
  if not files:
    raise ValueError(f"empty gallery: no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
  return files


def embed_folder(embedder: Embedder, folder: str | os.PathLike, out_dir: str | os.PathLike, *,
                 batch_size: int = 64, chunk_size: int = 1024, num_devices: int | None = None,
                 overwrite: bool = False, on_chunk: Callable[[int], None] | None = None,
                 progress: bool = True) -> dict:
  """Embeds the image files below ``folder`` (:func:`image_files` order) into ``out_dir``.

  Ids are the positions in that order, labels -1, ``meta['files']`` the paths relative to
  ``folder`` (``meta['source']``, absolute). Files go through ``embedder.load_files`` (so
  ``embedder.pp`` must give every file one shape). Resumable like :func:`embed_dataset`.
  """
  _check_sizes(batch_size, chunk_size)
  folder = pathlib.Path(folder).resolve()
  files = image_files(folder)
  runner = _Runner(embedder, batch_size=batch_size, num_devices=num_devices)
  dim = embedder.output_dim(embedder.load_files(files[:1]).shape[1:])
  writer = store_lib.StoreWriter(
      out_dir, model=embedder.model, dim=dim, num_examples=len(files), chunk_size=chunk_size,
      overwrite=overwrite, dataset=None, split=None, source=str(folder), class_names=[],
      files=[str(p.relative_to(folder)) for p in files], preprocessing=embedder.pp,
      image_shape=list(embedder.image_shape), embedder=embedder.spec)

  def embed_chunk(start, stop):
    return runner.embed_array(embedder.load_files(files[start:stop]))

  timing = _write_chunks(writer, embed_chunk, labels=np.full(len(files), -1, np.int32),
                         on_chunk=on_chunk, progress=progress)
  return _finish(writer, timing, progress)
