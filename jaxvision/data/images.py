"""Image files (PNG, JPEG, GIF, BMP) to model inputs, for prediction."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from jaxvision.data import preprocess


def read_image(path: str | os.PathLike, channels: int) -> tf.Tensor:
  """Decodes the image file ``path`` to uint8 ``[H, W, channels]``.

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is not a decodable image (its path is named).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"image file {path} not found")
  data = tf.io.read_file(path)
  try:
    return tf.io.decode_image(data, channels=channels, dtype=tf.uint8, expand_animations=False)
  except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
    raise ValueError(f"cannot decode {path} as an image (PNG/JPEG/GIF/BMP): "
                     f"{e.message.strip().splitlines()[0]}") from None


def load_images(paths: Sequence[str | os.PathLike], *, image_shape: tuple[int, int, int],
                pp: str) -> np.ndarray:
  """Loads image files as a batch ready for a model trained on ``image_shape`` images.

  Each file is decoded with ``image_shape[-1]`` channels (1: grey, 3: RGB), resized bilinearly
  to ``image_shape[:2]`` when its size differs (kept uint8, see ``preprocess.resize``), then
  passed through the evaluation spec ``pp`` (the same one given to ``make_eval_iterator``).
  With ``H`` and ``W`` None the file keeps its size (for a ``pp`` that sizes it itself).

  Args:
    paths: image file paths (at least one).
    image_shape: ``(H, W, C)`` of the dataset's stored images (``DatasetInfo.image_shape``),
      or ``(None, None, C)``.
    pp: preprocessing spec, e.g. ``'value_range(0, 1)'``.

  Returns:
    float32 ``[N, H', W', C']``: the images after ``pp``.

  Raises:
    FileNotFoundError: a missing file. ValueError: an undecodable file (named), no paths,
      or a bad ``image_shape``.
  """
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  if not paths:
    raise ValueError("load_images needs at least one path")
  size = tuple(image_shape[:2])
  if (len(image_shape) != 3 or image_shape[-1] not in (1, 3) or (
      size != (None, None) and (None in size or min(size) <= 0))):
    raise ValueError(f"image_shape must be (H, W, C) with C in (1, 3) and H, W positive ints "
                     f"or both None; got {image_shape}")
  if size != (None, None):
    size = (int(size[0]), int(size[1]))
  channels = int(image_shape[-1])
  pp_fn = preprocess.parse(pp)
  out = []
  for path in paths:
    image = read_image(path, channels)
    if size != (None, None) and tuple(image.shape[:2]) != size:
      image = preprocess.resize_image(image, size)
    features = preprocess.apply_eval(pp_fn, {"image": image})
    out.append(tf.cast(features["image"], tf.float32).numpy())
  shapes = {x.shape for x in out}
  if len(shapes) != 1:
    raise ValueError(f"pp {pp!r} produced images of different shapes {sorted(shapes)}")
  return np.stack(out)


def preprocess_images(images: np.ndarray, *, pp: str) -> np.ndarray:
  """Passes stored-format images ``[N, H, W, C]`` (uint8, as a dataset stores them) through
  the evaluation spec ``pp``; returns float32 ``[N, H', W', C']``."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"expected images [N, H, W, C] with C in (1, 3); found shape "
                     f"{images.shape}")
  pp_fn = preprocess.parse(pp)
  out = [tf.cast(preprocess.apply_eval(pp_fn, {"image": tf.constant(x)})["image"],
                 tf.float32).numpy() for x in images]
  return np.stack(out)
