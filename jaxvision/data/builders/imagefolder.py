"""Your own images: a folder of image files, or a zip of one, as a TFDS classification dataset.

Layouts (``root`` is the folder, or the inside of the zip)::

  root/<class>/**/<image>                       -> split 'train'
  root/train/<class>/**/<image>                 -> split 'train'
  root/test/<class>/**/<image>                  -> split 'test'        (optional)
  root/val/<class>/**/<image>                   -> split 'validation'  (optional; or
  root/validation/<class>/**/<image>                                    'validation/')

The split layout is used when ``root/train`` exists; then every folder beside it must be
``test``, ``val`` or ``validation``. Images are the files ending ``.png``, ``.jpg`` or ``.jpeg``
(any case), at any depth below their class folder; other files, hidden files and folders
(``.*``, ``__MACOSX``) are ignored, and image files outside a class folder are ignored with a
warning. When everything lies in one folder that is not a split name (a zip of ``myphotos/``),
that folder is the root. Class names are the class folder names over all splits, sorted
(labels ``0..K-1`` in that order); at least two are needed.

Images are decoded with PIL, fully (a file whose header reads but whose data is truncated
counts as corrupt), converted to RGB (``channels=3``, alpha dropped, grey replicated) or grey
(``channels=1``), and resized with PIL's bilinear filter (antialiased when shrinking) to
``size`` (aspect ratio not kept) unless already that size. EXIF orientation is not applied
(as ``jaxvision.data.images.read_image`` at prediction time). Stored features: ``image``
uint8 ``[H, W, C]``, ``label`` ``ClassLabel`` and ``file_name`` (the path below ``root``), so
``DatasetInfo.image_shape`` is known before anything is read.

A corrupt or unreadable image is skipped with an :class:`UnreadableImageWarning` naming the
file; with ``strict=True`` it raises a ValueError naming it instead.

``validation_split`` (a fraction in (0, 1)) holds out part of ``train`` as ``validation``
when the folder has no validation folder: within each class (files sorted by path) the first
``round(fraction * n)`` (at least 1 and at most ``n - 1`` when ``n >= 2``) of the permutation
``numpy.random.default_rng([seed, label]).permutation(n)``, so it is stratified, disjoint from
``train`` and fixed by ``seed``.

Prepared records (under ``paths.tfds_dir()``) are keyed by content: the config name is
``<basename>_<hash>`` over the absolute path, the options, and every image file's path, size
and modification time (in a zip: path, size and CRC-32), so an edited folder is prepared again.

Registered as the dataset ``imagefolder:<path>`` (``jaxvision.data.get_dataset``), and an
existing folder or ``.zip`` file given as the dataset name is read the same way. Options go
after ``?`` in the name, as in a URL query::

  imagefolder:/data/flowers?size=64&validation_split=0.1&seed=0
  /data/flowers.zip?size=96,128&channels=1&strict=true

``size``: ``S`` (square) or ``H,W`` (height, width, as the ``resize`` pp op); default: the
size all images share (every header is read; an error lists two sizes when they differ).
``channels``: 3 (default) or 1. ``validation_split``: see above (default none). ``seed``:
for ``validation_split`` (default 0). ``strict``: ``true``/``false`` (default false). From
Python: :func:`imagefolder_builder` takes the same options as keywords.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import itertools
import os
import pathlib
import urllib.parse
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxvision.data import datasets, paths
from jaxvision.data.builders import folder as folder_lib

EXTENSIONS = (".png", ".jpg", ".jpeg")
# Folder name under the root -> split name.
SPLIT_FOLDERS = {"train": "train", "test": "test", "val": "validation",
                 "validation": "validation"}
OPTIONS = ("size", "channels", "validation_split", "seed", "strict")
PREFIX = "imagefolder"
_NUM_THREADS = min(8, os.cpu_count() or 1)
_READ_AHEAD = 4 * _NUM_THREADS  # Files read and queued for the decoding threads.

# What reading or decoding a bad file raises (PIL: UnidentifiedImageError is an OSError,
# truncated data OSError, broken PNG chunks SyntaxError; zipfile: BadZipFile on a bad CRC,
# NotImplementedError on an unsupported compression, RuntimeError on an encrypted member).
_UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, zlib.error, zipfile.BadZipFile,
               NotImplementedError, RuntimeError, Image.DecompressionBombError)


class UnreadableImageWarning(UserWarning):
  """An image file that could not be read or decoded was skipped (the file is named)."""


@dataclasses.dataclass(frozen=True)
class ImageFolderOptions:
  """How the images are read (see the module docstring)."""

  size: tuple[int, int] | None = None   # (height, width); None: the size all images share
  channels: int = 3                     # 3: RGB, 1: grey
  validation_split: float | None = None
  seed: int = 0
  strict: bool = False

  def __post_init__(self):
    if self.size is not None:
      size = (self.size, self.size) if isinstance(self.size, (int, np.integer)) else self.size
      size = tuple(size)
      if len(size) != 2 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in size):
        raise ValueError(f"imagefolder: size must be a positive int or (height, width), got "
                         f"{self.size!r}")
      object.__setattr__(self, "size", tuple(int(d) for d in size))
    if self.channels not in (1, 3):
      raise ValueError(f"imagefolder: channels must be 1 (grey) or 3 (RGB), got "
                       f"{self.channels!r}")
    if self.validation_split is not None and not 0.0 < self.validation_split < 1.0:
      raise ValueError(f"imagefolder: validation_split must be a fraction in (0, 1), got "
                       f"{self.validation_split!r}")
    if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
      raise ValueError(f"imagefolder: seed must be an int >= 0, got {self.seed!r}")


def parse_spec(spec: str) -> tuple[str, ImageFolderOptions]:
  """Splits ``'<path>?size=64&channels=1'`` into the path and its options.

  Raises:
    ValueError: an unknown option (the known ones are listed) or a bad value.
  """
  path, _, query = spec.partition("?")
  try:
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
  except ValueError:
    raise ValueError(f"imagefolder {spec!r}: options after '?' must be key=value pairs joined "
                     f"by '&', e.g. '?size=64&channels=1'; got {query!r}") from None
  kwargs = {}
  for key, value in pairs:
    if key not in OPTIONS:
      raise ValueError(f"imagefolder {spec!r}: unknown option {key!r}; known: "
                       f"{', '.join(OPTIONS)}")
    try:
      if key == "size":
        kwargs[key] = tuple(int(v) for v in value.split(","))
        if len(kwargs[key]) == 1:
          kwargs[key] = kwargs[key][0]
      elif key in ("channels", "seed"):
        kwargs[key] = int(value)
      elif key == "validation_split":
        kwargs[key] = float(value)
      else:
        if value.lower() not in ("true", "false", "1", "0"):
          raise ValueError
        kwargs[key] = value.lower() in ("true", "1")
    except ValueError:
      expected = {"size": "S or H,W (ints)", "channels": "1 or 3", "seed": "an int",
                  "validation_split": "a fraction", "strict": "true or false"}[key]
      raise ValueError(f"imagefolder {spec!r}: option {key} must be {expected}, got "
                       f"{value!r}") from None
  return path, ImageFolderOptions(**kwargs)


def _hidden(name: str) -> bool:
  return name.startswith(".") or name == "__MACOSX"


def _is_image_name(name: str) -> bool:
  return name.lower().endswith(EXTENSIONS)


class _Source:
  """Image files in ``path``: ``members()`` lists them, ``read``/``open`` give their bytes."""

  kind = ""

  def __init__(self, path: pathlib.Path):
    self.path = path

  def close(self) -> None:
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class _FolderSource(_Source):
  """Image files below a folder, named by their POSIX path relative to it."""

  kind = "folder"

  def members(self) -> list[tuple[str, str]]:
    """``[(relative path, 'size:mtime_ns')]`` of every image file, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(self.path, followlinks=True):
      dirnames[:] = [d for d in dirnames if not _hidden(d)]
      rel = pathlib.PurePosixPath(pathlib.Path(dirpath).relative_to(self.path).as_posix())
      for name in filenames:
        if _hidden(name) or not _is_image_name(name):
          continue
        try:
          st = os.stat(os.path.join(dirpath, name))
          stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
          stamp = "unreadable"  # Reported (or raised) when the records are written.
        out.append(((rel / name).as_posix(), stamp))
    return sorted(out)

  def read(self, member: str) -> bytes:
    return (self.path / member).read_bytes()

  def open(self, member: str):
    return open(self.path / member, "rb")

  def display(self, member: str) -> str:
    return str(self.path / member)


class _ZipSource(_Source):
  """Image members of a zip file (read in place, never unpacked)."""

  kind = "zip"

  def __init__(self, path: pathlib.Path):
    super().__init__(path)
    try:
      self._zip = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
      raise ValueError(f"{path}: not a readable zip file ({e})") from None

  def members(self) -> list[tuple[str, str]]:
    """``[(member name, 'size:crc32')]`` of every image member, sorted."""
    return sorted((i.filename, f"{i.file_size}:{i.CRC:08x}") for i in self._zip.infolist()
                  if not i.is_dir() and _is_image_name(i.filename)
                  and not any(_hidden(p) for p in i.filename.split("/")))

  def read(self, member: str) -> bytes:
    return self._zip.read(member)

  def open(self, member: str):
    return self._zip.open(member)

  def display(self, member: str) -> str:
    return f"{self.path}/{member}"  # As zipfile.Path names a member.

  def close(self) -> None:
    self._zip.close()


def _open_source(path: str | os.PathLike) -> _Source:
  """A source over ``path``: a folder, or a zip file."""
  path = pathlib.Path(path).expanduser().resolve()
  if path.is_dir():
    return _FolderSource(path)
  if path.is_file():
    if not zipfile.is_zipfile(path):
      raise ValueError(f"imagefolder: {path} is a file but not a zip; expected a folder of "
                       "class folders or a .zip of one")
    return _ZipSource(path)
  raise FileNotFoundError(f"imagefolder: {path} not found; expected a folder "
                          "root/<class>/*.png|jpg|jpeg (or root/{train,test,val}/<class>/...) "
                          "or a .zip of one")


def is_image_source(name: str) -> bool:
  """Whether the dataset name ``name`` (options after ``?`` aside) is an existing folder or
  ``.zip`` file, which :func:`jaxvision.data.get_dataset` then reads as ``imagefolder:``."""
  path = pathlib.Path(name.partition("?")[0]).expanduser()
  return path.is_dir() or (path.is_file() and path.suffix.lower() == ".zip")


@dataclasses.dataclass(frozen=True)
class Layout:
  """The image files of a source sorted into splits and classes.

  ``splits`` maps a split name to ``((member, label, stamp), ...)`` sorted by member, where
  ``member`` is the path in the source and ``stamp`` its size and mtime or CRC.
  """

  root: str                             # '' or the leading folders taken as the root, 'x/'
  class_names: tuple[str, ...]
  splits: dict[str, tuple[tuple[str, int, str], ...]]
  ignored: tuple[str, ...]              # image files outside a class folder


def scan_layout(members: Sequence[tuple[str, str]], where: str) -> Layout:
  """Sorts ``[(member, stamp)]`` into splits and classes (see the module docstring).

  Raises:
    ValueError: no images, fewer than two classes, or a folder beside ``train`` that is not
      a split name (``where`` names the source in the message).
  """
  if not members:
    raise ValueError(f"imagefolder: no image files ({', '.join(EXTENSIONS)}) in {where}; "
                     "expected root/<class>/<image> or root/{train,test,val}/<class>/<image>")
  parts = [m.split("/") for m, _ in members]
  depth = 0
  while True:
    heads = {p[depth] for p in parts}
    if len(heads) != 1 or next(iter(heads)) in SPLIT_FOLDERS or any(
        len(p) < depth + 3 for p in parts):
      break
    depth += 1
  root = "".join(f"{h}/" for h in parts[0][:depth])
  rel = [p[depth:] for p in parts]
  split_layout = any(len(r) >= 3 and r[0] == "train" for r in rel)
  if split_layout:
    others = sorted({r[0] for r in rel if len(r) >= 2 and r[0] not in SPLIT_FOLDERS})
    if others:
      raise ValueError(f"imagefolder: {where}/{root} holds train/ and also {others}; beside "
                       f"train/ only {sorted(SPLIT_FOLDERS)} are expected")
    if {"val", "validation"} <= {r[0] for r in rel}:
      raise ValueError(f"imagefolder: {where}/{root} holds both val/ and validation/; "
                       "expected one of them")
  found, ignored = [], []
  for (member, stamp), r in zip(members, rel):
    if split_layout and len(r) >= 3:
      found.append((SPLIT_FOLDERS[r[0]], r[1], member, stamp))
    elif not split_layout and len(r) >= 2:
      found.append(("train", r[0], member, stamp))
    else:
      ignored.append(member)
  class_names = tuple(sorted({c for _, c, _, _ in found}))
  if len(class_names) < 2:
    raise ValueError(f"imagefolder: {where}/{root} has {len(class_names)} class folder(s) "
                     f"{list(class_names)}; expected at least 2 (root/<class>/<image>)")
  labels = {c: i for i, c in enumerate(class_names)}
  splits = {}
  for split, cls, member, stamp in found:
    splits.setdefault(split, []).append((member, labels[cls], stamp))
  return Layout(root, class_names, {s: tuple(v) for s, v in sorted(splits.items())},
                tuple(ignored))


def split_validation(examples: Sequence[tuple], fraction: float, seed: int
                     ) -> tuple[tuple, tuple]:
  """Splits ``examples`` (tuples whose item 1 is the label) into ``(train, validation)``.

  Stratified: per label, ``round(fraction * n)`` examples (at least 1 and at most ``n - 1``
  when ``n >= 2``, none when ``n == 1``) chosen by
  ``numpy.random.default_rng([seed, label]).permutation(n)`` over that label's examples in the
  given order. Both outputs keep the input order.
  """
  by_label = {}
  for i, example in enumerate(examples):
    by_label.setdefault(int(example[1]), []).append(i)
  held_out = set()
  for label, indices in by_label.items():
    n = len(indices)
    k = min(n - 1, max(1, int(fraction * n + 0.5))) if n >= 2 else 0
    perm = np.random.default_rng([seed, label]).permutation(n)
    held_out.update(indices[j] for j in perm[:k])
  train = tuple(e for i, e in enumerate(examples) if i not in held_out)
  validation = tuple(e for i, e in enumerate(examples) if i in held_out)
  return train, validation


def decode_image(data: bytes, *, size: tuple[int, int] | None, channels: int) -> np.ndarray:
  """Decodes image file bytes with PIL, fully, to uint8 ``[H, W, channels]``.

  Converted to RGB (``channels=3``; alpha dropped, grey replicated) or grey (``channels=1``)
  with PIL's ``convert``, then resized with ``Image.resize((W, H), BILINEAR)`` when ``size``
  (``(H, W)``) differs from the image's own.

  Raises:
    OSError, SyntaxError, ValueError, ...: the bytes are not a complete image PIL can decode.
  """
  with Image.open(io.BytesIO(data)) as image:
    image.load()
    mode = "RGB" if channels == 3 else "L"
    if image.mode == "P":
      image = image.convert("RGBA")  # Palette transparency, without PIL's warning.
    if image.mode != mode:
      image = image.convert(mode)
    if size is not None and image.size != (size[1], size[0]):
      image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
  return array.reshape(array.shape[:2] + (channels,))


def _common_size(source, members: Sequence[str]) -> tuple[int, int]:
  """The ``(H, W)`` every readable image header in ``members`` gives; ValueError if several."""
  sizes = {}
  for member in members:
    try:
      with source.open(member) as f, Image.open(f) as image:
        sizes.setdefault(image.size[::-1], member)
    except _UNREADABLE:
      continue  # Reported (or raised) when the records are written.
    if len(sizes) > 1:
      (s0, m0), (s1, m1) = list(sizes.items())[:2]
      raise ValueError(
          f"imagefolder: images in {source.path} differ in size ({s0[0]}x{s0[1]} "
          f"{source.display(m0)}, {s1[0]}x{s1[1]} {source.display(m1)}, as HxW); give one "
          f"size to resize to: imagefolder:{source.path}?size=H,W (or size=S)")
  if not sizes:
    raise ValueError(f"imagefolder: no readable image in {source.path}")
  return next(iter(sizes))


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(folder_lib.FolderConfig):
  """A :class:`FolderConfig` (``folder``: the folder or zip) plus the files of each split."""

  options: ImageFolderOptions = ImageFolderOptions()
  # split -> ((member, label), ...) in the source's order.
  files: dict[str, tuple[tuple[str, int], ...]] = dataclasses.field(default_factory=dict,
                                                                   repr=False)


def make_imagefolder_config(path: str | os.PathLike, *, options: ImageFolderOptions,
                            class_names: Sequence[str] | None = None) -> ImageFolderConfig:
  """Scans ``path`` (a folder or zip) and returns its config; reads no image data unless
  ``options.size`` is None (then every header is read for the common size).

  Raises:
    FileNotFoundError: ``path`` missing. ValueError: no images, bad layout, ``class_names``
      that differ from the class folders, ``validation_split`` with a validation folder, or
      images of different sizes without ``options.size``.
  """
  with _open_source(path) as source:
    layout = scan_layout(source.members(), str(source.path))
    if layout.ignored:
      warnings.warn(f"imagefolder: ignored {len(layout.ignored)} image file(s) outside class "
                    f"folders, e.g. {source.display(layout.ignored[0])}", stacklevel=2)
    names = layout.class_names
    if class_names is not None:
      if sorted(class_names) != list(names):
        raise ValueError(f"imagefolder: {source.path} has the class folders {list(names)}, "
                         f"expected {sorted(class_names)}")
      order = {c: i for i, c in enumerate(class_names)}
      relabel = [order[c] for c in names]
      layout = dataclasses.replace(layout, class_names=tuple(class_names), splits={
          s: tuple((m, relabel[y], st) for m, y, st in v) for s, v in layout.splits.items()})
      names = layout.class_names
    splits = dict(layout.splits)
    if options.validation_split is not None:
      if "validation" in splits:
        raise ValueError(f"imagefolder: {source.path} has its own validation folder; "
                         f"validation_split={options.validation_split} is for a folder "
                         "without one")
      if "train" not in splits:
        raise ValueError(f"imagefolder: {source.path} has no train images to hold out a "
                         "validation split from")
      splits["train"], splits["validation"] = split_validation(
          splits["train"], options.validation_split, options.seed)
    size = options.size or _common_size(
        source, [m for v in splits.values() for m, _, _ in v])
    image_shape = size + (options.channels,)
    key = [f"{ImageFolder.name} {ImageFolder.VERSION}", str(source.path), repr(options),
           repr(image_shape), *names]
    key += [f"{s}\t{m}\t{y}\t{st}" for s, v in sorted(splits.items()) for m, y, st in v]
    return ImageFolderConfig(
        name=folder_lib.config_name(source.path, key),
        description=f"image {source.kind} {source.path}",
        folder=str(source.path),
        class_names=names,
        image_shape=image_shape,
        options=options,
        files={s: tuple((m, y) for m, y, _ in v) for s, v in splits.items()},
    )


class ImageFolder(folder_lib.FolderBuilder):
  """TFDS builder over a folder or zip of images; build it with :func:`imagefolder_builder`."""

  name = "jaxvision_imagefolder"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  DESCRIPTION = "Image files read from {folder}, one class per folder."

  @staticmethod
  def make_config(folder: str | os.PathLike,
                  class_names: Sequence[str] | None = None) -> ImageFolderConfig:
    """The config with default options (``from_folder``); :func:`imagefolder_builder` takes
    them all."""
    return make_imagefolder_config(folder, options=ImageFolderOptions(), class_names=class_names)

  def feature_dict(self) -> dict[str, tfds.features.FeatureConnector]:
    """``image``, ``label`` and ``file_name`` (the path in the folder or zip)."""
    return {**super().feature_dict(), "file_name": tfds.features.Text()}

  def _split_generators(self, dl_manager):
    del dl_manager  # Local data only.
    return {split: self._generate_examples(split) for split in self.builder_config.files}

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
    config = self.builder_config
    options = config.options

    def encode(data: bytes | Exception) -> tuple[bytes | None, str]:
      """PNG bytes of the decoded, converted, resized image (TFDS stores them as they are;
      an array would cost a TF call each), or None and why not (``data`` may be the error
      reading the file raised)."""
      try:
        if isinstance(data, Exception):
          raise data
        image = decode_image(data, size=config.image_shape[:2], channels=options.channels)
      except _UNREADABLE as e:
        return None, f"{type(e).__name__}: {e}"
      png = io.BytesIO()
      Image.fromarray(image[..., 0] if options.channels == 1 else image).save(
          png, format="PNG", compress_level=1)
      return png.getvalue(), ""

    # Files are read here, in order; decoded and PNG-encoded in threads (PIL's decoders and
    # zlib release the GIL), at most _READ_AHEAD files ahead of what is yielded.
    files = iter(config.files[split])
    pending = collections.deque()
    with _open_source(config.folder) as source, \
        concurrent.futures.ThreadPoolExecutor(_NUM_THREADS) as pool:

      def submit():
        for member, label in itertools.islice(files, _READ_AHEAD - len(pending)):
          try:
            data = source.read(member)
          except _UNREADABLE as e:
            data = e
          pending.append((member, label, pool.submit(encode, data)))

      submit()
      while pending:
        member, label, future = pending.popleft()
        png, reason = future.result()
        submit()
        if png is None:
          self._unreadable(source.display(member), reason, options.strict)
          continue
        yield member, {"image": png, "label": label, "file_name": member}

  @staticmethod
  def _unreadable(where: str, reason: str, strict: bool) -> None:
    """Raises (``strict``) or warns that the image ``where`` could not be read."""
    if strict:
      raise ValueError(f"imagefolder: cannot read image {where} ({reason}); strict=True "
                       "(without it the file is skipped with a warning)")
    warnings.warn(f"imagefolder: skipping unreadable image {where} ({reason})",
                  UnreadableImageWarning, stacklevel=3)


def imagefolder_builder(path: str | os.PathLike, *, size: int | tuple[int, int] | None = None,
                        channels: int = 3, validation_split: float | None = None,
                        seed: int = 0, strict: bool = False,
                        class_names: Sequence[str] | None = None,
                        data_dir: str | os.PathLike | None = None) -> ImageFolder:
  """Returns the (not yet prepared) builder reading the images in ``path``.

  Args:
    path: a folder, or a zip file, laid out as in the module docstring.
    size: ``S`` or ``(H, W)`` to resize every image to; None: the size all images share.
    channels: 3 (RGB) or 1 (grey).
    validation_split: fraction of ``train`` held out as ``validation`` (stratified, by
      ``seed``); only for a folder without a validation folder.
    seed: seed of ``validation_split``.
    strict: raise on an unreadable image instead of skipping it with a warning.
    class_names: the class folder names in label order (default: sorted); must be the
      folders found.
    data_dir: where prepared records go (default ``paths.tfds_dir()``).

  Raises:
    FileNotFoundError: ``path`` missing. ValueError: see :func:`make_imagefolder_config`.
  """
  options = ImageFolderOptions(size=size, channels=channels, validation_split=validation_split,
                               seed=seed, strict=strict)
  config = make_imagefolder_config(path, options=options, class_names=class_names)
  return ImageFolder(config=config, data_dir=os.fspath(data_dir or paths.tfds_dir()))


@datasets.register_dataset(PREFIX, prefix=True, arg="path", takes_data_dir=False,
                           serves_paths=is_image_source)
def _resolve_imagefolder(spec: str, data_dir: None):
  del data_dir  # Rejected by get_dataset: records go to paths.tfds_dir().
  path, options = parse_spec(spec)
  builder = datasets.prepare(imagefolder_builder(path, **dataclasses.asdict(options)))
  return builder, datasets.info_from_builder(builder, f"{PREFIX}:{spec}",
                                             builder.builder_config.description)
