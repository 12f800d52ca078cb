"""Registered preprocessing ops composed by a spec string (big_vision style).

A spec is ops separated by ``|``; each op is a registered name, optionally called with
literal arguments::

  "random_crop(28, pad=2)|flip_lr|rotate(10)|resize(32)|value_range(0, 1)|normalize(0.1307, 0.3081)"

``parse(spec)`` returns ``fn(features, rng) -> features`` working on ONE example: ``features``
is a dict whose ``image`` is an ``[H, W, C]`` tensor (uint8 or float32); other keys pass
through. ``rng`` is a stateless seed, an int32/int64 tensor of shape ``[2]``; ``parse`` splits it
into one key per op with ``tf.random.experimental.stateless_split``, so the result depends only
on ``(features, rng)`` and works the same eagerly and inside ``tf.data`` maps.

Value conventions (order matters):

* uint8 images carry values in ``[0, 255]``. The geometric ops (``random_crop``, ``center_crop``,
  ``flip_lr``, ``rotate``, ``resize``, ``resize_small``, ``grayscale_to_rgb``) keep the dtype: interpolating ops
  round and clip back to uint8 when given uint8, and stay float32 when given float.
* ``value_range(lo, hi)`` maps ``[in_min, in_max]`` (default ``[0, 255]``) to ``[lo, hi]`` and
  returns float32.
* ``normalize(mean, std)`` computes ``(x - mean) / std`` with ``x`` in ``[0, 1]``: uint8 input is
  divided by 255 first; float input is taken to be in ``[0, 1]`` already (i.e. after
  ``value_range(0, 1)``). Use it last, on uint8 or right after ``value_range(0, 1)``.

New ops: decorate a factory with ``@register("name")``; the factory takes the spec's arguments and
returns ``op(features, rng) -> features``.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from typing import Any

import tensorflow as tf

Features = dict[str, Any]
Op = Callable[[Features, tf.Tensor], Features]

# Stateless RNG algorithm: fixed so draws do not depend on the device TF picks.
RNG_ALG = "philox"

_REGISTRY: dict[str, Callable[..., Op]] = {}


def register(name: str) -> Callable[[Callable[..., Op]], Callable[..., Op]]:
  """Decorator registering an op factory under ``name`` (an identifier)."""
  if not name.isidentifier():
    raise ValueError(f"op name must be an identifier, got {name!r}")

  def decorator(factory):
    if name in _REGISTRY and _REGISTRY[name] is not factory:
      raise ValueError(f"preprocessing op {name!r} is already registered")
    _REGISTRY[name] = factory
    return factory

  return decorator


def registered_ops() -> tuple[str, ...]:
  """Names of the registered ops, sorted."""
  return tuple(sorted(_REGISTRY))


def get_op(name: str) -> Callable[..., Op]:
  """Returns the factory registered as ``name``; ValueError listing the registered ops if none."""
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(f"unknown preprocessing op {name!r}; registered ops: "
                     f"{', '.join(registered_ops())}") from None


def _parse_op(text: str) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
  """Parses ``name`` or ``name(literal, ..., key=literal)`` into ``(name, args, kwargs)``."""
  try:
    node = ast.parse(text, mode="eval").body
  except SyntaxError as e:
    raise ValueError(f"cannot parse preprocessing op {text!r}: {e.msg}") from None
  if isinstance(node, ast.Name):
    return node.id, (), {}
  if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
    raise ValueError(f"preprocessing op {text!r} must be `name` or `name(args)`")
  if any(isinstance(a, ast.Starred) for a in node.args) or any(
      k.arg is None for k in node.keywords):
    raise ValueError(f"preprocessing op {text!r}: *args and **kwargs are not allowed")
  try:
    args = tuple(ast.literal_eval(a) for a in node.args)
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
  except ValueError:
    raise ValueError(f"preprocessing op {text!r}: arguments must be Python literals "
                     "(numbers, strings, tuples, lists)") from None
  return node.func.id, args, kwargs


def parse_ops(spec: str) -> list[tuple[str, str, tuple[Any, ...], dict[str, Any]]]:
  """Splits a spec string into its ops: ``[(text, name, args, kwargs), ...]`` in order.

  Only the syntax is checked (the names are not looked up). An empty spec gives ``[]``.
  """
  out = []
  texts = [t.strip() for t in spec.split("|")] if spec.strip() else []
  for text in texts:
    if not text:
      raise ValueError(f"empty op in preprocessing spec {spec!r}")
    out.append((text, *_parse_op(text)))
  return out


def parse(spec: str) -> Callable[[Features, tf.Tensor], Features]:
  """Builds ``fn(features, rng) -> features`` from a spec string (see the module docstring).

  An empty spec gives the identity. Raises ValueError for an unknown op (listing the registered
  ones), unparsable text, or arguments the op does not accept.
  """
  ops: list[Op] = []
  for text, name, args, kwargs in parse_ops(spec):
    factory = get_op(name)
    try:
      ops.append(factory(*args, **kwargs))
    except TypeError as e:
      raise ValueError(f"bad arguments for preprocessing op {text!r}: {e}") from None

  def fn(features: Features, rng) -> Features:
    features = dict(features)
    if not ops:
      return features
    keys = tf.random.experimental.stateless_split(_as_seed(rng), num=len(ops), alg=RNG_ALG)
    for i, op in enumerate(ops):
      features = op(features, keys[i])
    return features

  return fn


def _as_seed(rng) -> tf.Tensor:
  rng = tf.convert_to_tensor(rng)
  if rng.dtype not in (tf.int32, tf.int64):
    raise ValueError(f"rng must be an int32/int64 tensor of shape [2], got {rng.dtype}")
  rng.shape.assert_is_compatible_with([2])
  return rng


def _image_op(fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> Op:
  """Wraps ``fn(image, rng) -> image`` as an op on the ``image`` feature."""

  def op(features: Features, rng) -> Features:
    if "image" not in features:
      raise KeyError(f"preprocessing expects an 'image' feature, got keys {sorted(features)}")
    image = tf.convert_to_tensor(features["image"])
    if image.shape.rank != 3:
      raise ValueError(f"preprocessing expects one image [H, W, C], got shape {image.shape}")
    return {**features, "image": fn(image, rng)}

  return op


def _pair(size, what: str) -> tuple[int, int]:
  """``size`` (int or (h, w)) -> ``(h, w)`` of positive ints."""
  if isinstance(size, int):
    size = (size, size)
  if (not isinstance(size, (tuple, list)) or len(size) != 2
      or not all(isinstance(s, int) and s > 0 for s in size)):
    raise ValueError(f"{what}: size must be a positive int or (height, width), got {size!r}")
  return int(size[0]), int(size[1])


def _like(result: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
  """Casts a float ``result`` back to ``dtype``: uint8 is rounded and clipped to [0, 255]
  (a result already of ``dtype``, e.g. a nearest-neighbour resize, is returned as is)."""
  if result.dtype == dtype:
    return result
  if dtype == tf.uint8:
    return tf.cast(tf.clip_by_value(tf.round(result), 0.0, 255.0), tf.uint8)
  return tf.cast(result, dtype)


def _check_fits(image: tf.Tensor, h: int, w: int, what: str) -> list:
  """Static check when the shape is known, else a runtime assertion; returns control deps."""
  height, width = image.shape[0], image.shape[1]
  if height is not None and width is not None:
    if height < h or width < w:
      raise ValueError(f"{what}: crop {h}x{w} is larger than the image {height}x{width}")
    return []
  shape = tf.shape(image)
  return [tf.debugging.assert_greater_equal(
      shape[:2], tf.constant([h, w]), message=f"{what}: crop {h}x{w} larger than the image")]


def _uniform_int(rng, maxval) -> tf.Tensor:
  """Stateless int32 draw uniform in ``[0, maxval)``."""
  return tf.random.stateless_uniform([], seed=rng, minval=0, maxval=maxval, dtype=tf.int32,
                                     alg=RNG_ALG)


@register("random_crop")
def random_crop(size, pad: int = 0) -> Op:
  """Zero-pads ``pad`` pixels on each side of H and W, then crops a random ``size`` window.

  The offsets ``(dy, dx)`` are uniform over every window that fits. Keeps the dtype.
  """
  h, w = _pair(size, "random_crop")
  if not isinstance(pad, int) or pad < 0:
    raise ValueError(f"random_crop: pad must be an int >= 0, got {pad!r}")

  def fn(image, rng):
    if pad:
      image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    deps = _check_fits(image, h, w, "random_crop")
    with tf.control_dependencies(deps):
      shape = tf.shape(image)
      keys = tf.random.experimental.stateless_split(rng, num=2, alg=RNG_ALG)
      dy = _uniform_int(keys[0], shape[0] - h + 1)
      dx = _uniform_int(keys[1], shape[1] - w + 1)
    out = image[dy:dy + h, dx:dx + w, :]
    return tf.ensure_shape(out, [h, w, image.shape[2]])

  return _image_op(fn)


@register("center_crop")
def center_crop(size) -> Op:
  """Crops the central ``size`` window (offsets ``(H - h) // 2``, ``(W - w) // 2``)."""
  h, w = _pair(size, "center_crop")

  def fn(image, rng):
    del rng
    deps = _check_fits(image, h, w, "center_crop")
    with tf.control_dependencies(deps):
      shape = tf.shape(image)
      dy, dx = (shape[0] - h) // 2, (shape[1] - w) // 2
    return tf.ensure_shape(image[dy:dy + h, dx:dx + w, :], [h, w, image.shape[2]])

  return _image_op(fn)


@register("flip_lr")
def flip_lr(p: float = 0.5) -> Op:
  """Mirrors the image left-right with probability ``p`` (draw ``u < p``, ``u`` uniform [0, 1))."""
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"flip_lr: p must be in [0, 1], got {p!r}")

  def fn(image, rng):
    u = tf.random.stateless_uniform([], seed=rng, alg=RNG_ALG)
    return tf.where(u < p, tf.reverse(image, axis=[1]), image)

  return _image_op(fn)


def rotate_image(image: tf.Tensor, angle: tf.Tensor) -> tf.Tensor:
  """Rotates an ``[H, W, C]`` image by ``angle`` radians counter-clockwise as displayed.

  Rotation about the centre ``((H - 1) / 2, (W - 1) / 2)`` (pixel centres at integer
  coordinates), bilinear sampling, zeros outside. Output float32 for float input; uint8 input
  is rounded back to uint8.
  """
  dtype = image.dtype
  shape = tf.shape(image)
  hw = tf.cast(shape[:2], tf.float32)
  cy, cx = (hw[0] - 1.0) / 2.0, (hw[1] - 1.0) / 2.0
  angle = tf.cast(angle, tf.float32)
  cos, sin = tf.cos(angle), tf.sin(angle)
  # Output pixel (x, y) samples the input at R(angle) @ (x - cx, y - cy) + (cx, cy).
  transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                        sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=tf.cast(image, tf.float32)[None], transforms=transform[None],
      output_shape=shape[:2], fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
  return _like(tf.ensure_shape(out[0], image.shape), dtype)


@register("rotate")
def rotate(max_degrees: float) -> Op:
  """Rotates by an angle ``max_degrees * (2u - 1)`` degrees, ``u`` uniform in [0, 1).

  See :func:`rotate_image` (bilinear, zero fill, counter-clockwise for positive angles).
  """
  if not isinstance(max_degrees, (int, float)) or max_degrees < 0:
    raise ValueError(f"rotate: max_degrees must be a number >= 0, got {max_degrees!r}")

  def fn(image, rng):
    u = tf.random.stateless_uniform([], seed=rng, alg=RNG_ALG)
    angle = (2.0 * u - 1.0) * (max_degrees * math.pi / 180.0)
    return rotate_image(image, angle)

  return _image_op(fn)


_RESIZE_METHODS = ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5",
                   "gaussian", "mitchellcubic")


def resize_image(image: tf.Tensor, size, method: str = "bilinear",
                 antialias: bool = False) -> tf.Tensor:
  """``tf.image.resize`` to ``size`` (``(h, w)`` or an int32 ``[2]`` tensor; half-pixel
  centres) keeping the dtype (uint8 rounded and clipped)."""
  out = tf.image.resize(image, size, method=method, antialias=antialias)
  return _like(out, image.dtype)


@register("resize")
def resize(size, method: str = "bilinear", antialias: bool = False) -> Op:
  """Resizes to ``size`` (int for square, or ``(h, w)``) with ``tf.image.resize``; keeps dtype."""
  h, w = _pair(size, "resize")
  if method not in _RESIZE_METHODS:
    raise ValueError(f"resize: method must be one of {_RESIZE_METHODS}, got {method!r}")

  def fn(image, rng):
    del rng
    return resize_image(image, (h, w), method, antialias)

  return _image_op(fn)


@register("resize_small")
def resize_small(size: int, method: str = "bilinear", antialias: bool = False) -> Op:
  """Resizes keeping the aspect ratio so that the shorter side is ``size`` (the longer one is
  ``round(longer * size / shorter)``), with ``tf.image.resize``; keeps dtype. With
  ``center_crop`` after it, the usual ImageNet evaluation crop of images of any size."""
  if not isinstance(size, int) or size <= 0:
    raise ValueError(f"resize_small: size must be a positive int, got {size!r}")
  if method not in _RESIZE_METHODS:
    raise ValueError(f"resize_small: method must be one of {_RESIZE_METHODS}, got {method!r}")

  def fn(image, rng):
    del rng
    hw = tf.cast(tf.shape(image)[:2], tf.float64)
    new_hw = tf.cast(tf.round(hw * (size / tf.reduce_min(hw))), tf.int32)
    return resize_image(image, new_hw, method, antialias)

  return _image_op(fn)


@register("value_range")
def value_range(lo: float, hi: float, in_min: float = 0.0, in_max: float = 255.0,
                clip_values: bool = False) -> Op:
  """Maps ``[in_min, in_max]`` linearly to ``[lo, hi]``; float32 out (optionally clipped)."""
  if in_max == in_min:
    raise ValueError(f"value_range: in_min and in_max must differ, got {in_min}")

  def fn(image, rng):
    del rng
    image = tf.cast(image, tf.float32)
    out = lo + (image - in_min) * ((hi - lo) / (in_max - in_min))
    if clip_values:
      out = tf.clip_by_value(out, min(lo, hi), max(lo, hi))
    return out

  return _image_op(fn)


def _per_channel(value, what: str) -> tuple[float, ...]:
  values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
  if not values or not all(isinstance(v, (int, float)) for v in values):
    raise ValueError(f"normalize: {what} must be a number or a list of numbers, got {value!r}")
  return tuple(float(v) for v in values)


@register("normalize")
def normalize(mean, std) -> Op:
  """``(x - mean) / std`` with ``x`` in [0, 1] (uint8 input divided by 255; float input as is).

  ``mean`` and ``std`` are scalars or per-channel lists (length C). float32 out.
  """
  mean_v, std_v = _per_channel(mean, "mean"), _per_channel(std, "std")
  if any(s <= 0 for s in std_v):
    raise ValueError(f"normalize: std must be > 0, got {std!r}")

  def fn(image, rng):
    del rng
    channels = image.shape[-1]
    for name, v in (("mean", mean_v), ("std", std_v)):
      if len(v) != 1 and channels is not None and len(v) != channels:
        raise ValueError(f"normalize: {name} has {len(v)} values but the image has "
                         f"{channels} channels")
    x = tf.cast(image, tf.float32)
    if image.dtype == tf.uint8:
      x = x / 255.0
    return (x - tf.constant(mean_v, tf.float32)) / tf.constant(std_v, tf.float32)

  return _image_op(fn)


# Keras Applications' ``imagenet_utils.preprocess_input`` modes.
KERAS_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


@register("keras_imagenet")
def keras_imagenet(mode: str = "caffe") -> Op:
  """Keras's ``keras.applications.imagenet_utils.preprocess_input(x, mode=mode)``.

  Input: an RGB ``[H, W, 3]`` image, uint8 or float with values in ``[0, 255]``; float32 out.

  * ``'caffe'`` (VGG16, ResNet50): RGB -> BGR, then minus ``[103.939, 116.779, 123.68]``
    (BGR order); values stay on the 0-255 scale.
  * ``'tf'``: ``x / 127.5 - 1`` (range ``[-1, 1]``).
  * ``'torch'``: ``x / 255``, then ``(x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]``.
  """
  if mode not in ("caffe", "tf", "torch"):
    raise ValueError(f"keras_imagenet: mode must be 'caffe', 'tf' or 'torch'; found {mode!r}")

  def fn(image, rng):
    del rng
    if image.shape[-1] != 3:
      raise ValueError(f"keras_imagenet expects an RGB image [H, W, 3]; found shape "
                       f"{image.shape}")
    x = tf.cast(image, tf.float32)
    if mode == "tf":
      return x / 127.5 - 1.0
    if mode == "torch":
      return (x / 255.0 - tf.constant(IMAGENET_MEAN_RGB)) / tf.constant(IMAGENET_STD_RGB)
    return x[..., ::-1] - tf.constant(KERAS_CAFFE_MEAN_BGR)

  return _image_op(fn)


@register("grayscale_to_rgb")
def grayscale_to_rgb() -> Op:
  """Repeats a 1-channel image to 3 channels; 3-channel images pass through."""

  def fn(image, rng):
    del rng
    channels = image.shape[-1]
    if channels == 3:
      return image
    if channels != 1:
      raise ValueError(f"grayscale_to_rgb: expected 1 or 3 channels, got shape {image.shape}")
    return tf.tile(image, [1, 1, 3])

  return _image_op(fn)


def apply_eval(pp: Callable[[Features, tf.Tensor], Features], features: Features) -> Features:
  """Applies ``pp`` with a fixed rng (for evaluation/prediction specs without randomness)."""
  return pp(features, tf.zeros([2], tf.int64))

