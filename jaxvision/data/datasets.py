"""Classification datasets by name: a registry filled by the builder modules.

``get_dataset(name)`` looks ``name`` up among the registered datasets and returns a prepared
TFDS builder and its :class:`DatasetInfo`. Each builder module registers its own names with
:func:`register_dataset` (the package ``jaxvision.data.builders`` imports them all), so a new
dataset is one new builder module. Registered today:

=================  ==========================================================================
name               source (module)
=================  ==========================================================================
``digits``         scikit-learn's 8x8 digits, train 1437 / test 360 (``builders/digits.py``)
``mnist``          ``data_dir`` as an IDX folder if given; else ``$JAXVISION_DATA_DIR/mnist``
                   if it exists; else the TFDS catalog ``mnist`` (download) (``builders/idx.py``)
``fashion_mnist``  same with the IDX folder ``fashion-mnist`` (``builders/idx.py``)
``cifar10``        same with the folder ``cifar10`` holding CIFAR-10's python version
                   (``cifar-10-batches-py``, itself or as a subfolder); when that folder is
                   absent, the JPEG copy ``cifar10-jpeg/cifar10-jpeg.zip`` if it exists; else
                   the catalog. ``data_dir`` may also be such a ``.zip`` (``builders/cifar.py``)
``idx:<folder>``   any MNIST-layout IDX folder (``builders/idx.py``)
``imagefolder:``   a folder of images, ``root/<class>/*.png|jpg|jpeg`` or
``<path>``         ``root/{train,test,val}/<class>/...``, or a ``.zip`` of one, with options
                   after ``?`` (``imagefolder:/x?size=64&validation_split=0.1``); an existing
                   folder or ``.zip`` given as the name is read the same way
                   (``builders/imagefolder.py``)
=================  ==========================================================================

Our builders write prepared records under ``paths.tfds_dir()``; catalog datasets use TFDS's
own data dir (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

Registering a dataset::

  @datasets.register_dataset("my_set")
  def _my_set(name, data_dir):
    builder = datasets.prepare(MyBuilder(data_dir=...))
    return builder, datasets.info_from_builder(builder, name, "my source")

A prefix registration (``register_dataset("idx", prefix=True, arg="folder")``) serves every
name ``idx:<folder>``; its resolver is called with the part after ``idx:``. A prefix
registration with ``serves_paths=fn`` also serves every otherwise unknown name for which
``fn(name)`` is true (e.g. an existing folder); its resolver is then called with the whole name.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import tensorflow_datasets as tfds

from jaxvision.data import paths

PREFIX_SEP = ":"


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a training loop needs to know about a classification dataset."""

  name: str                            # as given to get_dataset, e.g. 'digits', 'idx:/data/x'
  source: str                          # e.g. 'sklearn digits', 'IDX folder /x/mnist', 'TFDS catalog mnist'
  num_classes: int
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]    # HWC of the stored images
  num_examples: dict[str, int]         # per split name, e.g. {'train': 60000, 'test': 10000}


# ``fn(name_or_arg, data_dir) -> (prepared builder, DatasetInfo)``: ``name_or_arg`` is the
# registered name, or for a prefix registration the text after ``<prefix>:``; ``data_dir`` is
# the caller's folder or None.
Resolver = Callable[[str, str | os.PathLike | None], tuple[tfds.core.DatasetBuilder, DatasetInfo]]
# ``(path, fn(path) -> builder not yet prepared)``: one local copy of a dataset.
LocalSource = tuple[os.PathLike, Callable[[os.PathLike], tfds.core.DatasetBuilder]]


@dataclasses.dataclass(frozen=True)
class _Entry:
  resolver: Resolver
  prefix: bool
  arg: str                 # placeholder shown for a prefix registration, e.g. 'folder'
  takes_data_dir: bool
  serves_paths: Callable[[str], bool] | None  # unknown names this prefix also serves

  def display(self, name: str) -> str:
    return f"{name}{PREFIX_SEP}<{self.arg}>" if self.prefix else name


# Registered name (or prefix) -> entry, in registration order.
_REGISTRY: dict[str, _Entry] = {}


def register_dataset(name: str, *, prefix: bool = False, arg: str = "arg",
                     takes_data_dir: bool = True,
                     serves_paths: Callable[[str], bool] | None = None
                     ) -> Callable[[Resolver], Resolver]:
  """Decorator registering a resolver for the dataset ``name`` (see the module docstring).

  Args:
    name: the dataset name; with ``prefix=True`` the prefix, and the dataset names are
      ``<name>:<arg>`` with a non-empty ``<arg>`` handed to the resolver.
    prefix: whether ``name`` is a prefix.
    arg: what follows the prefix, shown in the list of registered names (``idx:<folder>``).
    takes_data_dir: False when a ``data_dir`` means nothing for this dataset;
      :func:`get_dataset` then rejects one before calling the resolver.
    serves_paths: with ``prefix=True``, ``fn(name) -> bool``: a name that is neither
      registered nor ``<prefix>:...`` and for which ``fn`` is true (e.g. an existing folder)
      goes whole to this resolver, as if given as ``<name>:<name>``.

  Returns:
    A decorator that registers ``fn(name_or_arg, data_dir) -> (builder, DatasetInfo)`` and
    returns it unchanged.

  Raises:
    ValueError: ``name`` is empty, holds ``':'``, or is already registered; ``serves_paths``
      without ``prefix``.
  """
  if not name or PREFIX_SEP in name:
    raise ValueError(f"dataset name must be non-empty without {PREFIX_SEP!r}; got {name!r}")
  if serves_paths is not None and not prefix:
    raise ValueError(f"dataset {name!r}: serves_paths needs prefix=True")

  def decorator(fn: Resolver) -> Resolver:
    if name in _REGISTRY:
      raise ValueError(f"dataset {_REGISTRY[name].display(name)!r} is already registered")
    _REGISTRY[name] = _Entry(fn, prefix, arg, takes_data_dir, serves_paths)
    return fn

  return decorator


def registered_datasets() -> tuple[str, ...]:
  """The registered names, exact names first then prefixes as ``prefix:<arg>``.

  Each group is in registration order, e.g.
  ``('digits', 'mnist', 'fashion_mnist', 'cifar10', 'idx:<folder>', 'imagefolder:<path>')``.
  """
  exact = [n for n, e in _REGISTRY.items() if not e.prefix]
  prefixes = [e.display(n) for n, e in _REGISTRY.items() if e.prefix]
  return tuple(exact + prefixes)


def _lookup(name: str) -> tuple[_Entry, str]:
  """Returns ``(entry, name_or_arg)`` for ``name``; ValueError listing the known names."""
  entry = _REGISTRY.get(name)
  if entry is not None and not entry.prefix:
    return entry, name
  head, sep, arg = name.partition(PREFIX_SEP)
  entry = _REGISTRY.get(head) if sep else None
  if entry is not None and entry.prefix:
    if not arg:
      raise ValueError(f"dataset {entry.display(head)!r} needs a {entry.arg} after "
                       f"'{head}{PREFIX_SEP}', got {name!r}")
    return entry, arg
  path_entries = [(n, e) for n, e in _REGISTRY.items() if e.serves_paths is not None]
  for _, entry in path_entries:
    if entry.serves_paths(name):
      return entry, name
  paths_hint = "".join(f"; or a path that {e.display(n)} reads" for n, e in path_entries)
  raise ValueError(f"unknown dataset {name!r}; known: {', '.join(registered_datasets())}"
                   f"{paths_hint}")


def get_dataset(name: str, *,
                data_dir: str | os.PathLike | None = None
                ) -> tuple[tfds.core.DatasetBuilder, DatasetInfo]:
  """Resolves ``name`` to a prepared TFDS builder and its :class:`DatasetInfo`.

  Args:
    name: a registered name (``registered_datasets()``; see the module docstring), e.g.
      'digits', 'mnist', 'fashion_mnist', 'cifar10', 'idx:<folder>' or
      'imagefolder:<path>', or an existing image folder or ``.zip`` (read as
      'imagefolder:<path>').
    data_dir: for 'mnist', 'fashion_mnist' and 'cifar10', the local folder to read (it must
      be complete); rejected for datasets registered with ``takes_data_dir=False`` ('digits',
      'idx:<folder>', 'imagefolder:<path>').

  Returns:
    ``(builder, info)``; the builder is prepared (records written) and ready for
    ``as_dataset``.

  Raises:
    ValueError: unknown name (the registered names are listed), a prefix with nothing after
      it, or a ``data_dir`` that means nothing for ``name``.
    FileNotFoundError: a local folder that is missing or incomplete (missing files listed),
      or no local folder and a failed catalog download.
  """
  entry, name_or_arg = _lookup(name)
  if data_dir is not None and not entry.takes_data_dir:
    raise ValueError(f"dataset {name!r} takes no data_dir (got {data_dir!r}); prepared "
                     f"records go to ${paths.TFDS_ENV_VAR} ({paths.tfds_dir()})")
  return entry.resolver(name_or_arg, data_dir)


# Helpers for resolvers.


def info_from_builder(builder: tfds.core.DatasetBuilder, name: str, source: str) -> DatasetInfo:
  """The :class:`DatasetInfo` of a prepared builder with ``image`` and ``label`` features."""
  features = builder.info.features
  image, label = features["image"], features["label"]
  return DatasetInfo(
      name=name,
      source=source,
      num_classes=int(label.num_classes),
      class_names=tuple(label.names),
      image_shape=tuple(int(d) for d in image.shape),
      num_examples={s: int(v.num_examples) for s, v in builder.info.splits.items()},
  )


def prepare(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  """``builder`` after ``download_and_prepare()`` (a no-op when its records exist)."""
  builder.download_and_prepare()
  return builder


def _catalog_builder(name: str) -> tfds.core.DatasetBuilder:
  """``tfds.builder(name)`` downloaded and prepared (needs network on first use)."""
  return prepare(tfds.builder(name))


def local_or_catalog(name: str, data_dir: str | os.PathLike | None, *, folder_name: str,
                     make_builder: Callable[[os.PathLike], tfds.core.DatasetBuilder],
                     alternatives: Sequence[LocalSource] = ()
                     ) -> tuple[tfds.core.DatasetBuilder, DatasetInfo]:
  """A dataset read from a local folder when there is one, else from the TFDS catalog.

  Args:
    name: the dataset name, also its TFDS catalog name (e.g. 'mnist').
    data_dir: the caller's folder; it must then be complete (no catalog fallback).
    folder_name: the folder under the data root (``paths.local_dataset_dir``) used when
      ``data_dir`` is None, e.g. 'fashion-mnist'.
    make_builder: ``fn(folder) -> builder`` (not yet prepared) for a local folder.
    alternatives: other local copies, ``(path, fn(path) -> builder)``, tried in order when
      ``data_dir`` is None and the folder is absent (e.g. a zip of JPEGs under the data root),
      before the catalog.

  Returns:
    ``(prepared builder, info)``; ``info.source`` is the folder builder's description (e.g.
    'IDX folder /data/mnist') or ``'TFDS catalog <name>'``.

  Raises:
    FileNotFoundError: an incomplete local folder, or no local folder and a failed catalog
      download (both causes named).
  """
  folder = data_dir if data_dir is not None else paths.local_dataset_dir(folder_name)
  local = [(folder, make_builder)]
  if data_dir is None:
    local += list(alternatives)
  for path, make in local:
    if data_dir is not None or os.path.exists(path):
      builder = prepare(make(path))
      return builder, info_from_builder(builder, name, builder.builder_config.description)
  try:
    builder = _catalog_builder(name)
  except Exception as e:  # pylint: disable=broad-except
    tried = (f"the local folder {folder} was not found" if len(local) == 1 else
             f"none of its local copies ({', '.join(str(p) for p, _ in local)}) was found")
    raise FileNotFoundError(
        f"dataset {name!r}: {tried}, and preparing the TFDS "
        f"catalog dataset {name!r} failed ({type(e).__name__}: {e}). Provide the data locally "
        f"(set ${paths.ENV_VAR} to the data root) or make the TFDS download work.") from e
  return builder, info_from_builder(builder, name, f"TFDS catalog {name}")
