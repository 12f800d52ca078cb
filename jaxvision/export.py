"""Export trained models for serving: StableHLO, TensorFlow SavedModel, TFLite and ONNX.

>>> from jaxvision import export
>>> export.export_workdir("runs/mnist")                  # every format into runs/mnist/export/
>>> spec = export.classifier_serving(model, variables, image_shape=(28, 28, 1),
...                                  pp="value_range(0, 1)")     # or from params in code
>>> export.export(spec, "out/", formats=("stablehlo", "onnx"))
>>> run = export.load("out/model.onnx"); run(images=uint8_images)["probabilities"]
>>> spec = export.detector_serving(fcos, variables, canvas_size=384, image_size=(480, 640))
>>> export.load("out/model.tflite")(images=uint8_images)["boxes"]  # after export(spec, ...)

What is exported is a task's :class:`ServingSpec` (``Task.serving``; or built in code with
:func:`classifier_serving`, :func:`generator_serving`, :func:`sequence_serving`,
:func:`detector_serving`): a pure JAX function of named inputs whose first axis is the batch,
any preprocessing included, returning named outputs. Every format takes any batch size:

* ``stablehlo``: ``model.stablehlo``, ``jax.export``'s serialized StableHLO with a symbolic
  batch dimension, lowered for :data:`PLATFORMS`. Load it with ``jax.export.deserialize`` and
  call it with keyword inputs: ``exported.call(images=x)`` returns the dict of outputs.
* ``saved_model``: ``saved_model/``, a TensorFlow SavedModel made with ``jax2tf`` whose
  ``serving_default`` signature takes the named inputs (a classifier: uint8 images as the
  dataset stores them) and returns the named outputs; the weights are TF variables. Plain
  TensorFlow loads it (``tf.saved_model.load``); nothing of jaxvision or JAX is needed.
* ``tflite``: ``model.tflite``, float32, converted from the SavedModel by
  ``tf.lite.TFLiteConverter``; ``tflite_int8``: ``model_int8.tflite``, dynamic-range int8
  weights (activations stay float).
* ``onnx``: ``model.onnx`` (opset :data:`ONNX_OPSET`), converted by ``tf2onnx`` from the
  float32 TFLite model (``tf2onnx`` cannot read the SavedModel's ``XlaCallModule`` op; three
  of its conversions are completed or corrected here, see :func:`_onnx_rewriter`), inputs and
  outputs renamed to the spec's names and checked with ``onnx.checker``.

What is served is the model as trained, in float32 and inference mode, with rewrites that
keep its values and only change how TensorFlow, TFLite and ONNX see it: flax ``avg_pool``
fields (``LeNet5``) become depthwise convolutions, a forecaster's scans are unrolled, the
exporter's preprocessing gathers with static slices; and where a converter cannot read a
primitive, the program written for it replaces that primitive (see the section "Programs for
TensorFlow and TFLite"): ``top_k`` becomes a stable sort for the SavedModel and TFLite's
``TOPK_V2`` for TFLite, and a detector's TFLite program (and so its ONNX one) runs the images
of a batch one at a time in a loop, inside which every shape is static (TFLite gathers only
from static shapes). A detector's exported outputs are its padded detections, boxes mapped to
the input images' pixels (:func:`detector_serving`).

:func:`export` writes the chosen formats and ``export.json`` (inputs, outputs, metadata such as
class names and the preprocessing, file sizes), then runs each written file on example inputs
and records its largest absolute difference from the JAX function (``max_abs_diff``); a float32
format further off than :data:`PARITY_TOLERANCE` raises :class:`ExportMismatchError`.

Portable ops: the CPU backend's formulations (``jaxvision.backends.cpu``) are opt-in per trace
and per thread; export traces in a thread of its own, so every exported program holds XLA's
portable ops (``stablehlo.convolution``, ``reduce_window``), never a custom call, even when the
caller is inside ``backends.cpu.enabled()``. A plain ``jax.export.export(jax.jit(lambda x:
model.apply(variables, x, train=False)[0]))`` of your own gets the same ops.

Dependencies: ``stablehlo`` needs only JAX; ``saved_model`` and ``tflite`` need TensorFlow
(a dependency of jaxvision); ``onnx`` and running TFLite files need the extra
``pip install 'jaxvision[export]'`` (tf2onnx, onnx, onnxruntime, ai-edge-litert).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import pathlib
import re
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jax_core
from jax.extend import source_info_util
import numpy as np

from jaxvision import tasks
from jaxvision.data import preprocess
from jaxvision.training import trainer
from jaxvision.training.task import ServingSpec, Task, TensorSpec

__all__ = [
    "FORMATS", "ALL_FORMATS", "PLATFORMS", "ExportMismatchError", "MissingExtraError",
    "UnsupportedOpError",
    "ServingSpec", "TensorSpec", "classifier_serving", "generator_serving", "sequence_serving",
    "detector_serving", "DETECTION_OUTPUTS", "preprocessing_fn", "detection_preprocessing_fn",
    "serving_from_workdir", "export_stablehlo", "to_saved_model", "to_tflite", "to_onnx",
    "export", "export_workdir", "export_mode", "load",
]

# The formats written by default, and every format known (``tflite_int8`` on request).
FORMATS = ("stablehlo", "saved_model", "tflite", "onnx")
ALL_FORMATS = FORMATS + ("tflite_int8",)
# Platforms the StableHLO and the SavedModel's XlaCallModule are lowered for (one program
# each, chosen when loaded): CPU and NVIDIA GPUs.
PLATFORMS = ("cpu", "cuda")
ONNX_OPSET = 17
# Largest accepted difference between a float32 format's outputs and the JAX function's, as a
# fraction of max(1, largest |output|) (measured: <= 1e-6 on random-init models).
PARITY_TOLERANCE = 1e-4
FILE_NAMES = {"stablehlo": "model.stablehlo", "saved_model": "saved_model",
              "tflite": "model.tflite", "tflite_int8": "model_int8.tflite",
              "onnx": "model.onnx"}
SUMMARY_FILE = "export.json"
EXPORT_EXTRA = "pip install 'jaxvision[export]'"
_DTYPES = {"uint8": np.uint8, "float32": np.float32, "int32": np.int32}
# A detector's outputs (see :func:`detector_serving`).
DETECTION_OUTPUTS = ("boxes", "scores", "classes", "num_valid")


class ExportMismatchError(RuntimeError):
  """An exported file's outputs differ from the JAX function's beyond the tolerance."""


class MissingExtraError(ImportError):
  """A package of the optional ``export`` extra is not installed."""


class UnsupportedOpError(ValueError):
  """A format's converter cannot express an op of the program (the message names it)."""


def _require(module: str, what: str):
  """Imports ``module``, or raises :class:`MissingExtraError` naming the pip command."""
  import importlib
  try:
    return importlib.import_module(module)
  except ImportError:
    raise MissingExtraError(f"{what} needs the package {module!r}: {EXPORT_EXTRA}") from None


# -- Preprocessing in JAX. -----------------------------------------------------------------------


def _to_uint8(x: jax.Array) -> jax.Array:
  """As ``preprocess._like``: round (half to even), clip to [0, 255], uint8."""
  return jnp.clip(jnp.round(x), 0.0, 255.0).astype(jnp.uint8)


def _half_pixel(out_size: int, in_size: int) -> np.ndarray:
  """Source coordinates of the output pixels, as TF's half-pixel-centre resizes compute them
  (float32): ``(i + 0.5) * (in / out) - 0.5``."""
  scale = np.float32(in_size) / np.float32(out_size)
  return (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)


def _take(x: jax.Array, index: np.ndarray, axis: int) -> jax.Array:
  """``jnp.take(x, index, axis)`` for a static ``index``, as slices and one concatenation
  (runs of consecutive indices share a slice): traced with a symbolic batch, a gather
  becomes a dynamic gather, which TFLite cannot convert."""
  parts, start = [], 0
  for i in range(1, len(index) + 1):
    if i == len(index) or index[i] != index[i - 1] + 1:
      parts.append(jax.lax.slice_in_dim(x, int(index[start]), int(index[i - 1]) + 1, axis=axis))
      start = i
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=axis)


def _resize_axis(x: jax.Array, axis: int, out_size: int, method: str) -> jax.Array:
  """Resizes float ``x`` along ``axis`` as TF's kernels do, in float32.

  ``'bilinear'`` is ``resize_bilinear`` with half-pixel centres, ``lo + (hi - lo) * lerp``
  with edge-clamped ``lo``/``hi``; the product is rounded on its own (:func:`_rounded_product`)
  as TF rounds it: a fused multiply-add (XLA's contraction) differs by an ulp and rounds a
  uint8 result the other way at near-ties, so formats would disagree by a grey level.
  ``'nearest'`` is ``resize_nearest_neighbor`` (half-pixel centres).
  """
  in_size = x.shape[axis]
  if method == "nearest":
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale)
    return _take(x, np.minimum(src.astype(np.int64), in_size - 1), axis)
  coord = _half_pixel(out_size, in_size)
  floor = np.floor(coord)
  lower = np.maximum(floor, 0).astype(np.int64)
  upper = np.minimum(np.ceil(coord), in_size - 1).astype(np.int64)
  shape = [1] * x.ndim
  shape[axis] = out_size
  lerp = (coord - floor).astype(np.float32).reshape(shape)
  lo, hi = _take(x, lower, axis), _take(x, upper, axis)
  return lo + _rounded_product(hi - lo, lerp)


_LOWEST = np.float32(np.finfo(np.float32).min)


def _rounded_product(a: jax.Array, b) -> jax.Array:
  """``a * b``, rounded to float32 before it is used: ``max(a * b, lowest float32)`` is the
  identity for finite values, and XLA cannot contract a product that feeds a ``max`` into a
  fused multiply-add with the sum after it (an ``optimization_barrier`` does not stop it)."""
  return jnp.maximum(a * b, _LOWEST)


def _resize(size, method: str = "bilinear", antialias: bool = False):
  if method not in ("bilinear", "nearest"):
    raise _Unsupported(f"resize method {method!r} (bilinear and nearest are exported)")
  if antialias and method != "nearest":
    raise _Unsupported("antialias=True (resizes without antialias are exported)")

  def op(x, shape):
    h, w = size
    if (h, w) == tuple(shape[:2]):
      return x, shape  # tf.image.resize to the same size is the identity
    if method == "nearest":  # a copy of pixels: the dtype stays
      return _resize_axis(_resize_axis(x, 1, h, "nearest"), 2, w, "nearest"), (h, w, shape[2])
    # TF interpolates along the width first, then the height.
    y = _resize_axis(_resize_axis(x.astype(jnp.float32), 2, w, "bilinear"), 1, h, "bilinear")
    return (_to_uint8(y) if x.dtype == jnp.uint8 else y), (h, w, shape[2])

  return op


def _hw(size) -> tuple[int, int]:
  """An op's ``size`` (int or ``(h, w)``, checked by the TF op's factory) as ``(h, w)``."""
  return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _j_resize(size, method: str = "bilinear", antialias: bool = False):
  return _resize(_hw(size), method, antialias)


def _j_resize_small(size: int, method: str = "bilinear", antialias: bool = False):
  def op(x, shape):
    hw = np.asarray(shape[:2], np.float64)
    new = tuple(int(v) for v in np.round(hw * (size / hw.min())))
    return _resize(new, method, antialias)(x, shape)
  return op


def _j_center_crop(size):
  h, w = _hw(size)

  def op(x, shape):
    if shape[0] < h or shape[1] < w:
      raise ValueError(f"center_crop: crop {h}x{w} is larger than the image "
                       f"{shape[0]}x{shape[1]}")
    dy, dx = (shape[0] - h) // 2, (shape[1] - w) // 2
    return x[:, dy:dy + h, dx:dx + w, :], (h, w, shape[2])

  return op


def _j_value_range(lo, hi, in_min=0.0, in_max=255.0, clip_values=False):
  def op(x, shape):
    out = lo + (x.astype(jnp.float32) - in_min) * ((hi - lo) / (in_max - in_min))
    if clip_values:
      out = jnp.clip(out, min(lo, hi), max(lo, hi))
    return out, shape
  return op


def _j_normalize(mean, std):
  mean_v = tuple(mean) if isinstance(mean, (tuple, list)) else (mean,)
  std_v = tuple(std) if isinstance(std, (tuple, list)) else (std,)

  def op(x, shape):
    y = x.astype(jnp.float32)
    if x.dtype == jnp.uint8:
      y = y / 255.0
    return (y - jnp.asarray(mean_v, jnp.float32)) / jnp.asarray(std_v, jnp.float32), shape
  return op


def _j_keras_imagenet(mode: str = "caffe"):
  def op(x, shape):
    y = x.astype(jnp.float32)
    if mode == "tf":
      return y / 127.5 - 1.0, shape
    if mode == "torch":
      return ((y / 255.0 - jnp.asarray(preprocess.IMAGENET_MEAN_RGB, jnp.float32))
              / jnp.asarray(preprocess.IMAGENET_STD_RGB, jnp.float32)), shape
    return y[..., ::-1] - jnp.asarray(preprocess.KERAS_CAFFE_MEAN_BGR, jnp.float32), shape
  return op


def _j_grayscale_to_rgb():
  def op(x, shape):
    if shape[2] == 3:
      return x, shape
    return jnp.tile(x, (1, 1, 1, 3)), (shape[0], shape[1], 3)
  return op


# Evaluation preprocessing ops the exporter writes in JAX (same arguments as the registered
# TF ops of ``jaxvision.data.preprocess``, whose factories check them first).
_JAX_OPS = {
    "value_range": _j_value_range,
    "normalize": _j_normalize,
    "resize": _j_resize,
    "resize_small": _j_resize_small,
    "center_crop": _j_center_crop,
    "grayscale_to_rgb": _j_grayscale_to_rgb,
    "keras_imagenet": _j_keras_imagenet,
}


class _Unsupported(ValueError):
  pass


def preprocessing_fn(pp: str, image_shape: Sequence[int]
                     ) -> tuple[Callable[[jax.Array], jax.Array], tuple[int, int, int]]:
  """The evaluation spec ``pp`` (``jaxvision.data.preprocess``) as a batched JAX function.

  Args:
    pp: an evaluation preprocessing spec, e.g. ``'resize(16)|value_range(0, 1)'``. Exported
      ops: ``value_range``, ``normalize``, ``resize`` and ``resize_small`` (bilinear or
      nearest, without antialias), ``center_crop``, ``grayscale_to_rgb``, ``keras_imagenet``.
      They compute what the TF ops compute for each image, bit for bit where the result is
      rounded back to uint8 (the geometric ops keep uint8 uint8, rounded half to even).
    image_shape: ``(H, W, C)`` of the stored images (fixed sizes).

  Returns:
    ``(fn, out_shape)``: ``fn(uint8 [N, H, W, C]) -> float32 [N, *out_shape]``.

  Raises:
    ValueError: an op the exporter cannot express (random ones, other resize methods), bad
      arguments, or an image shape that is not fixed.
  """
  shape = tuple(image_shape)
  if len(shape) != 3 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
    raise ValueError(f"exporting preprocessing needs a fixed stored image shape (H, W, C); "
                     f"found {tuple(image_shape)}")
  shape = tuple(int(d) for d in shape)
  ops = []
  for text, name, args, kwargs in preprocess.parse_ops(pp):
    try:
      preprocess.get_op(name)(*args, **kwargs)  # the TF op's own argument checks
    except TypeError as e:
      raise ValueError(f"bad arguments for preprocessing op {text!r}: {e}") from None
    if name not in _JAX_OPS:
      raise ValueError(f"cannot export preprocessing op {text!r} of {pp!r}: the exporter "
                       f"writes {', '.join(sorted(_JAX_OPS))} (evaluation ops without "
                       f"randomness)")
    try:
      ops.append(_JAX_OPS[name](*args, **kwargs))
    except _Unsupported as e:
      raise ValueError(f"cannot export preprocessing op {text!r} of {pp!r}: {e}") from None
  out_shape = shape
  for op in ops:  # the output shape, from a trace of the ops on one image
    out_shape = jax.eval_shape(lambda x, op=op, s=out_shape: op(x, s)[0],
                               jax.ShapeDtypeStruct((1, *out_shape), jnp.uint8)).shape[1:]

  def fn(images: jax.Array) -> jax.Array:
    x, s = images, shape
    for op in ops:
      x, s = op(x, s)
    return x.astype(jnp.float32)

  return fn, tuple(int(d) for d in out_shape)


# -- Serving specs from code. --------------------------------------------------------------------


def _average_pool(inputs: jax.Array, window_shape, strides=None, padding="VALID",
                  count_include_pad: bool = True) -> jax.Array:
  """``flax.linen.avg_pool`` of ``[B, H, W, C]`` as a depthwise convolution with weights
  ``1 / window size`` (the same values, summed in another order): TFLite keeps a
  ``reduce_window`` sum as its ``STABLEHLO_REDUCE_WINDOW`` op, which tf2onnx cannot read."""
  if not count_include_pad or inputs.ndim != 4:
    raise ValueError("exporting an average pool needs [B, H, W, C] inputs and "
                     "count_include_pad=True (flax's default)")
  window = tuple(window_shape)
  channels = inputs.shape[-1]
  kernel = jnp.full((*window, 1, channels), 1.0 / np.prod(window), inputs.dtype)
  return jax.lax.conv_general_dilated(
      inputs, kernel, tuple(strides or (1,) * len(window)), padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels)


def _serving_model(model):
  """``model`` as exported: computing in float32 (params are float32 whatever ``dtype``
  trained in), and with a pooling field set to ``flax.linen.avg_pool`` (``LeNet5.pool``)
  replaced by :func:`_average_pool`."""
  updates = {"dtype": jnp.float32} if hasattr(model, "dtype") else {}
  for field in dataclasses.fields(model):
    if getattr(model, field.name, None) is nn.avg_pool:
      updates[field.name] = _average_pool
  return model.clone(**updates) if updates else model


def _host(variables):
  return jax.tree.map(np.asarray, jax.device_get(variables))


def _check_traces(spec: ServingSpec) -> ServingSpec:
  """Traces ``spec.fn`` once on batch-1 inputs: a shape error surfaces now, clearly."""
  args = [jax.ShapeDtypeStruct((1, *s.shape[1:]), s.dtype) for s in spec.inputs]
  try:
    out = jax.eval_shape(spec.fn, spec.variables, *args)
  except (TypeError, ValueError) as e:
    raise ValueError(f"the serving function of {spec.name} does not accept inputs "
                     f"{[(s.name, s.shape, s.dtype) for s in spec.inputs]}: {e}") from None
  if set(out) != set(spec.outputs):
    raise ValueError(f"the serving function returns {sorted(out)}; the spec lists "
                     f"{sorted(spec.outputs)}")
  return spec


def classifier_serving(model, variables, *, image_shape: Sequence[int], pp: str = "",
                       class_names: Sequence[str] | None = None, name: str | None = None,
                       preprocess_inputs: bool = True) -> ServingSpec:
  """A classifier's serving function: uint8 images in, ``logits`` and ``probabilities`` out.

  Args:
    model: a classifier of ``jaxvision.models`` (``model.apply(variables, x, train=False)``
      gives ``(logits [N, K], intermediates)``); it is run in float32.
    variables: its variables (``{'params', 'batch_stats'?}``).
    image_shape: ``(H, W, C)`` of the images as stored (the serving input, uint8).
    pp: the evaluation preprocessing spec applied inside (see :func:`preprocessing_fn`).
    class_names: the ``K`` labels, recorded in the metadata.
    name: the model's name (default: its class name).
    preprocess_inputs: False: the input is the model's own float32 input ``[N, *image_shape]``
      (already preprocessed; ``pp`` must be empty).

  Returns:
    Inputs ``images`` uint8 ``[N, H, W, C]`` (float32 when not ``preprocess_inputs``);
    outputs ``logits`` float32 ``[N, K]`` and ``probabilities`` (their softmax).
  """
  model = _serving_model(model)
  if preprocess_inputs:
    pre, model_shape = preprocessing_fn(pp, image_shape)
    images = TensorSpec("images", (None, *map(int, image_shape)), "uint8", 0, 255)
  else:
    if pp:
      raise ValueError(f"preprocess_inputs=False takes model inputs as they are; found pp "
                       f"{pp!r} (leave it empty)")
    pre, model_shape = (lambda x: x.astype(jnp.float32)), tuple(map(int, image_shape))
    images = TensorSpec("images", (None, *model_shape), "float32")

  def fn(variables, images):
    logits, _ = model.apply(variables, pre(images), train=False)
    logits = logits.astype(jnp.float32)
    return {"logits": logits, "probabilities": jax.nn.softmax(logits, axis=-1)}

  metadata = {"task": "classification", "preprocessing": pp if preprocess_inputs else None,
              "model_input_shape": list(model_shape)}
  if class_names is not None:
    metadata["class_names"] = list(class_names)
  return _check_traces(ServingSpec(fn, _host(variables), (images,), ("logits", "probabilities"),
                                   name or type(model).__name__, metadata))


def generator_serving(generator, variables, *, class_names: Sequence[str] | None = None,
                      name: str | None = None) -> ServingSpec:
  """A GAN generator's serving function: latents (and class ids) in, images out.

  Args:
    generator: ``jaxvision.models.Generator`` or ``ConditionalGenerator`` (run in float32,
      inference mode: BatchNorm's statistics as stored in ``variables``).
    variables: its variables (``{'params', 'batch_stats'}``; a GAN workdir's EMA params with
      their standing statistics, see ``GANTask.restore_generator``).
    class_names: names of the conditional generator's classes, recorded in the metadata.
    name: the model's name (default: its class name).

  Returns:
    Inputs ``z`` float32 ``[N, latent_dim]`` (standard normal) and, for a conditional
    generator, ``labels`` int32 ``[N]`` in ``[0, num_classes)``; output ``images`` float32
    ``[N, H, W, C]`` in ``[-1, 1]`` (uint8 pixels: ``round((images + 1) * 127.5)``).
  """
  generator = _serving_model(generator)
  num_classes = getattr(generator, "num_classes", None)
  inputs = (TensorSpec("z", (None, int(generator.latent_dim)), "float32"),)
  if num_classes is not None:
    inputs += (TensorSpec("labels", (None,), "int32", 0, int(num_classes) - 1),)

  def fn(variables, z, *labels):
    return {"images": generator.apply(variables, z, *labels, train=False).astype(jnp.float32)}

  metadata = {"task": "gan", "latent_dim": int(generator.latent_dim),
              "image_shape": list(generator.image_shape), "num_classes": num_classes,
              "value_range": [-1.0, 1.0]}
  if class_names is not None:
    metadata["class_names"] = list(class_names)
  return _check_traces(ServingSpec(fn, _host(variables), inputs, ("images",),
                                   name or type(generator).__name__, metadata))


def sequence_serving(model, variables, *, input_shape: Sequence[int],
                     name: str | None = None) -> ServingSpec:
  """A frame forecaster's serving function (e.g. ``ConvLSTMForecaster``).

  Args:
    model: ``model.apply(variables, frames, train=False)`` gives ``(logits [N, T_out, H, W,
      C], ...)``; run in float32.
    variables: its variables.
    input_shape: ``(T_in, H, W, C)`` of the input frames.
    name: the model's name (default: its class name).

  Returns:
    Input ``frames`` float32 ``[N, T_in, H, W, C]`` with intensities in ``[0, 1]`` (stored
    uint8 frames / 255); output ``predicted_frames`` float32 ``[N, T_out, H, W, C]`` in
    ``[0, 1]`` (``sigmoid`` of the logits).
  """
  model = _serving_model(model)
  if hasattr(model, "unroll"):
    # Fully unrolled scans (their lengths are static; same numbers): tf2onnx loses the shape
    # of ConvLSTMForecaster's zero inputs inside its forecaster's loop.
    model = model.clone(unroll=True)
  frames = TensorSpec("frames", (None, *map(int, input_shape)), "float32", 0.0, 1.0)

  def fn(variables, frames):
    logits, _ = model.apply(variables, frames, train=False)
    return {"predicted_frames": jax.nn.sigmoid(logits.astype(jnp.float32))}

  metadata = {"task": "sequence_prediction", "input_shape": list(frames.shape[1:]),
              "value_range": [0.0, 1.0]}
  return _check_traces(ServingSpec(fn, _host(variables), (frames,), ("predicted_frames",),
                                   name or type(model).__name__, metadata))


def _fit_to_canvas(image_size: tuple[int, int], canvas: int) -> tuple[tuple[int, int], np.ndarray]:
  """``(resized (h, w), scale (sy, sx) float32)``, as ``data.detection.resize_crop_pad``
  computes them in float32 for an eval image (``scale=1``): the longer side fitted to the
  canvas, ``round`` half to even, at least 1 pixel."""
  hw = np.asarray(image_size, np.float32)
  fit = np.float32(canvas) / np.float32(hw.max())
  new = np.maximum(np.round(hw * fit * np.float32(1.0)).astype(np.int32), 1)
  return (int(new[0]), int(new[1])), (new.astype(np.float32) / hw).astype(np.float32)


def detection_preprocessing_fn(image_size: Sequence[int], canvas_size: int,
                               value_range: Sequence[float] = (0.0, 1.0)
                               ) -> Callable[[jax.Array], jax.Array]:
  """The detection task's evaluation preprocessing (``data.detection.preprocess_eval``) as a
  batched JAX function of fixed-size images.

  ``uint8 [N, H, W, 3] -> float32 [N, S, S, 3]``: pixel values mapped ``[0, 255] ->
  value_range``, the image resized (bilinear, half-pixel centres, no antialias) so that its
  longer side fits the canvas ``S`` keeping its aspect ratio, then zero-padded at the bottom
  and right. The same float32 operations as TF's, in its order.
  """
  canvas = int(canvas_size)
  h, w = _hw(image_size)
  (new_h, new_w), _ = _fit_to_canvas((h, w), canvas)
  lo, hi = (float(v) for v in value_range)
  scale, offset = np.float32((hi - lo) / 255.0), np.float32(lo)

  def fn(images: jax.Array) -> jax.Array:
    x = _rounded_product(images.astype(jnp.float32), scale) + offset
    if (new_h, new_w) != (h, w):  # TF interpolates along the width first, then the height
      x = _resize_axis(_resize_axis(x, 2, new_w, "bilinear"), 1, new_h, "bilinear")
    return jnp.pad(x, ((0, 0), (0, canvas - new_h), (0, canvas - new_w), (0, 0)))

  return fn


def detector_serving(model, variables, *, canvas_size: int,
                     image_size: Sequence[int] | int | None = None,
                     value_range: Sequence[float] = (0.0, 1.0),
                     class_names: Sequence[str] | None = None,
                     name: str | None = None) -> ServingSpec:
  """A detector's serving function: uint8 images in, padded detections in their pixels out.

  Args:
    model: a detector of ``jaxvision.models.detection`` (``FCOS``, ``FasterRCNN``):
      ``model.apply(variables, canvases, train=False)`` gives padded detections in canvas
      pixels (its own post-processing: top-k, decoding, NMS); run in float32.
    variables: its variables (``{'params', 'batch_stats'?}``).
    canvas_size: ``S``, the square canvas the detector was trained on (the detection config's
      ``canvas_size``).
    image_size: ``(H, W)`` (or one int) of the served images, fixed when exported; default
      ``(S, S)``.
    value_range: pixel values ``[0, 255]`` map to it (the config's ``value_range``).
    class_names: the ``K`` labels, recorded in the metadata.
    name: the model's name (default: its class name).

  Inside: the task's evaluation preprocessing (:func:`detection_preprocessing_fn`), the
  detector with its post-processing, and the boxes mapped back to the input images (divided
  by the resize scale, clipped to the image), every shape static.

  Returns:
    Input ``images`` uint8 ``[N, H, W, 3]``; outputs ``boxes`` float32 ``[N, D, 4]`` xyxy in
    input-image pixels (0 in padding), ``scores`` float32 ``[N, D]`` decreasing (-1 in
    padding), ``classes`` int32 ``[N, D]`` (-1 in padding) and ``num_valid`` int32 ``[N]``
    (``D``: the detector's ``max_detections``).
  """
  if not (isinstance(canvas_size, (int, np.integer)) and canvas_size >= 1):
    raise ValueError(f"canvas_size must be an integer >= 1; found {canvas_size!r}")
  canvas = int(canvas_size)
  size = (canvas, canvas) if image_size is None else image_size
  try:
    h, w = _hw(size)
  except (TypeError, ValueError, IndexError):
    h = w = 0
  if h < 1 or w < 1 or (not isinstance(size, (int, np.integer)) and len(size) != 2):
    raise ValueError(f"image_size must be (H, W) of positive integers; found {image_size!r}")
  value_range = tuple(float(v) for v in value_range)
  if len(value_range) != 2 or not all(np.isfinite(value_range)):
    raise ValueError(f"value_range must be two finite numbers (lo, hi); found {value_range}")
  model = _serving_model(model)
  pre = detection_preprocessing_fn((h, w), canvas, value_range)
  _, scale_yx = _fit_to_canvas((h, w), canvas)
  scale = np.asarray([scale_yx[1], scale_yx[0]] * 2, np.float32)  # xyxy
  limit = np.asarray([w, h, w, h], np.float32)
  images = TensorSpec("images", (None, h, w, 3), "uint8", 0, 255)

  def fn(variables, images):
    det = model.apply(variables, pre(images), train=False)
    boxes = jnp.clip(det["boxes"].astype(jnp.float32) / scale, 0.0, limit)
    return {"boxes": boxes, "scores": det["scores"].astype(jnp.float32),
            "classes": det["classes"].astype(jnp.int32),
            "num_valid": det["num_valid"].astype(jnp.int32)}

  metadata = {"task": "detection", "image_size": [h, w], "canvas_size": canvas,
              "value_range": list(value_range), "box_format": "xyxy, input-image pixels",
              "max_detections": int(getattr(model, "max_detections", 0)) or None,
              "score_threshold": getattr(model, "score_threshold", None),
              "padding": "scores and classes -1, boxes 0 after num_valid",
              # TFLite's program loops over the images of a batch (ONNX's is made from it).
              "one_image_at_a_time": ["tflite", "tflite_int8", "onnx"]}
  if class_names is not None:
    metadata["class_names"] = list(class_names)
  spec = ServingSpec(fn, _host(variables), (images,), DETECTION_OUTPUTS,
                     name or type(model).__name__, metadata)
  _PER_EXAMPLE_ON_TFLITE.add(fn)
  return _check_traces(spec)


def serving_from_workdir(workdir, *, checkpoint: str = "best") -> tuple[ServingSpec, int]:
  """``(spec, checkpoint step)``: the serving function of a workdir's best (or latest)
  checkpoint, from its task's :meth:`Task.serving`."""
  task = tasks.create_task(trainer.load_config(workdir))
  restored = trainer.restore(task, workdir, checkpoint)
  return _task_serving(task, restored), restored.step


def _task_serving(task: Task, restored) -> ServingSpec:
  try:
    return task.serving(restored.state, restored.meta)
  except NotImplementedError as e:
    raise ValueError(str(e)) from None


# -- The formats. --------------------------------------------------------------------------------


def _in_own_thread(fn: Callable, *args, **kwargs):
  """``fn(*args, **kwargs)`` run in a new thread (exceptions re-raised here).

  The CPU backend's opt-in is a thread-local context (``backends.cpu.enabled``), never open
  in a new thread: everything ``fn`` traces takes the portable form of each op.
  """
  with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jaxvision-export") as ex:
    return ex.submit(fn, *args, **kwargs).result()


def _symbolic_args(spec: ServingSpec) -> dict[str, jax.ShapeDtypeStruct]:
  batch, = jax.export.symbolic_shape("batch")
  return {s.name: jax.ShapeDtypeStruct((batch, *s.shape[1:]), s.dtype) for s in spec.inputs}


def _keyword_fn(spec: ServingSpec):
  names = [s.name for s in spec.inputs]

  def fn(**inputs):
    return spec.fn(spec.variables, *(inputs[n] for n in names))

  return fn


# -- Programs for TensorFlow and TFLite: portable formulations chosen at export. ----------------
# StableHLO holds the serving function as traced. The SavedModel's and TFLite's converters
# read less: TensorFlow's StableHLO (an older version) has no ``composite`` op, which JAX's
# ``top_k`` is serialized as, and TFLite's converter takes neither ``sort``, nor a gather or
# slice of an operand of dynamic shape (the batch), nor integer bitwise ops; tf2onnx cannot
# read the ``STABLEHLO_SCATTER`` op TFLite keeps for a batched scatter. Export traces the
# serving function to a jaxpr and re-emits it with those primitives replaced (inside jit,
# loops, conditionals and custom derivatives too): the values are the same, only their
# formulation changes.

# Per-example functions (detectors): their TFLite program runs the examples of a batch one at
# a time in a loop, so that every shape inside is static.
_PER_EXAMPLE_ON_TFLITE: weakref.WeakSet = weakref.WeakSet()
# TFLite ops emitted as ``stablehlo.custom_call @tfl.<op>``, which TFLite's converter turns
# into that op ("TFL op on a StableHLO custom-call carrier"; attributes in the backend
# config). Only in the SavedModel written for TFLite, which TensorFlow itself cannot run.
_TFL_OPS = ("tfl.topk_v2", "tfl.gather")


def _tfl_call(op: str, results, *operands, **attributes):
  config = "{" + ", ".join(f"{k} = {v} : i32" for k, v in attributes.items()) + "}"
  return jax.ffi.ffi_call(op, results, custom_call_api_version=1,
                          legacy_backend_config=config)(*operands)


def _moved_last(fn, x, axis: int):
  """``fn`` of ``x`` with ``axis`` moved last, its outputs moved back."""
  last = x.ndim - 1
  if axis in (-1, last):
    return fn(x)
  return [jnp.moveaxis(y, -1, axis) for y in fn(jnp.moveaxis(x, axis, -1))]


def _top_k_sorted(eqn, operand):
  """``lax.top_k`` as a stable sort of ``-x`` (integers: ``~x``, which cannot overflow) with
  an iota (ties: lower index first, as ``top_k``), sliced to ``k``: TensorFlow's StableHLO
  reads it."""
  k = int(eqn.params["k"])
  flip = jnp.negative if jnp.issubdtype(operand.dtype, jnp.floating) else jnp.invert

  def last(x):
    n = x.ndim - 1
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, n)
    keys, index = jax.lax.sort((flip(x), iota), dimension=n, num_keys=1, is_stable=True)
    return [flip(jax.lax.slice_in_dim(keys, 0, k, axis=n)),
            jax.lax.slice_in_dim(index, 0, k, axis=n)]

  return _moved_last(last, operand, eqn.params.get("axis", operand.ndim - 1))


def _top_k_tflite(eqn, operand):
  """``lax.top_k`` as TFLite's ``TOPK_V2`` (sorted, ties: lower index first)."""
  k = int(eqn.params["k"])

  def last(x):
    shape = (*x.shape[:-1], k)
    return list(_tfl_call("tfl.topk_v2", (jax.ShapeDtypeStruct(shape, x.dtype),
                                          jax.ShapeDtypeStruct(shape, jnp.int32)),
                          x, jnp.int32(k)))

  return _moved_last(last, operand, eqn.params.get("axis", operand.ndim - 1))


def _tfl_take(x: jax.Array, i) -> jax.Array:
  """``x[i:i + 1]`` along the batch axis as TFLite's ``GATHER`` (of a dynamic-shaped
  operand, which TFLite's converter does not slice)."""
  return _tfl_call("tfl.gather", jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype),
                   x, jnp.reshape(i, (1,)).astype(jnp.int32), axis=0, batch_dims=0)


def _sets_single_elements(eqn) -> bool:
  """Whether a ``scatter`` equation sets single elements (``x.at[i].set(v)``, also vmapped:
  no window, every operand axis indexed or batched) without colliding updates."""
  dn = eqn.params["dimension_numbers"]
  operand, _, updates = (v.aval for v in eqn.invars)
  batching = tuple(int(d) for d in getattr(dn, "operand_batching_dims", ()))
  inserted = tuple(int(d) for d in dn.inserted_window_dims)
  if dn.update_window_dims or sorted(inserted + batching) != list(range(operand.ndim)):
    return False
  if eqn.params.get("unique_indices"):
    return True
  try:  # one update per batch element cannot collide
    return int(updates.size) <= int(np.prod([operand.shape[d] for d in batching]))
  except (TypeError, jax_core.InconclusiveDimensionOperation):  # a symbolic batch
    return False


def _scatter_as_select(eqn, operand, indices, updates):
  """A scatter setting single elements as a one-hot mask and a select: TFLite keeps a
  batched scatter as ``STABLEHLO_SCATTER``, which tf2onnx cannot read."""
  dn = eqn.params["dimension_numbers"]
  batching = tuple(int(d) for d in getattr(dn, "operand_batching_dims", ()))
  index_batching = tuple(int(d) for d in getattr(dn, "scatter_indices_batching_dims", ()))
  # JAX's scatters keep the index vector last: update axis u is indices axis u.
  target = {}
  for k, d in enumerate(dn.scatter_dims_to_operand_dims):
    t = indices[..., k].astype(jnp.int32)
    if eqn.params.get("mode") == jax.lax.GatherScatterMode.CLIP:
      t = jnp.clip(t, 0, operand.shape[int(d)] - 1)
    target[int(d)] = t
  for d, u in zip(batching, index_batching):
    target[d] = jax.lax.broadcasted_iota(jnp.int32, updates.shape, u)
  rank, shape = updates.ndim, updates.shape + operand.shape
  mask = None
  for d in range(operand.ndim):
    here = jax.lax.broadcasted_iota(jnp.int32, shape, rank + d)
    # A difference compared with 0: TFLite would fuse ``iota == index`` into a ONE_HOT whose
    # rank-2 indices tf2onnx cannot convert.
    hit = (here - jnp.reshape(target[d], updates.shape + (1,) * operand.ndim)) == 0
    mask = hit if mask is None else mask & hit
  spread = jnp.reshape(updates, updates.shape + (1,) * operand.ndim)
  axes = tuple(range(rank))
  value = jnp.sum(jnp.where(mask, spread, jnp.zeros((), updates.dtype)), axis=axes)
  return jnp.where(jnp.any(mask, axis=axes), value.astype(operand.dtype), operand)


def _is_div_exact(eqn) -> bool:
  info = getattr(eqn.params["call_jaxpr"].jaxpr, "debug_info", None)
  source = getattr(info, "func_src_info", None) or ""
  return source.startswith("_div_exact_f32 ") and "roi_align" in source


def _div_exact_as_division(eqn, *args):
  """``ops.roi_align.div_exact`` (a correctly rounded float32 ``a / n`` under XLA, through
  integer bit operations TFLite lacks) as a plain division, which TFLite and ONNX Runtime
  round correctly."""
  a, n = args[eqn.params.get("num_consts", 0):]
  return [a / n]


def _always(eqn) -> bool:
  del eqn
  return True


# Rules: primitive name -> (matches(eqn), rule(eqn, *inputs) giving the outputs, a list for
# primitives with several results).
_TENSORFLOW_RULES = {"top_k": (_always, _top_k_sorted)}
_TFLITE_RULES = {"top_k": (_always, _top_k_tflite),
                 "scatter": (_sets_single_elements, _scatter_as_select),
                 "custom_jvp_call": (_is_div_exact, _div_exact_as_division)}
# Call-like primitives whose body is inlined (the rules reach inside).
_INLINED = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr",
            "core_call": "call_jaxpr", "custom_jvp_call": "call_jaxpr",
            "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr",
            "remat": "jaxpr", "checkpoint": "jaxpr"}


def _uses(jaxpr, rules) -> bool:
  """Whether a rule applies to an equation of ``jaxpr`` (a Jaxpr) or of a jaxpr inside it."""
  for eqn in jaxpr.eqns:
    rule = rules.get(eqn.primitive.name)
    if rule is not None and rule[0](eqn):
      return True
    if any(_uses(sub, rules) for sub in jax_core.jaxprs_in_params(eqn.params)):
      return True
  return False


def _closed(value):
  return isinstance(value, jax_core.ClosedJaxpr)


def _rewrite_closed(closed, rules):
  """``closed`` (a ClosedJaxpr) with ``rules`` applied, as a new ClosedJaxpr of the same
  input and output types (``closed`` itself when no rule applies)."""
  if not _uses(closed.jaxpr, rules):
    return closed
  avals = [jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type)
           for a in closed.in_avals]
  new = jax.make_jaxpr(lambda *a: _eval(closed.jaxpr, closed.consts, a, rules))(*avals)
  if [(a.shape, a.dtype) for a in new.out_avals] != [(a.shape, a.dtype)
                                                     for a in closed.out_avals]:
    raise AssertionError(f"a rewrite changed output types {closed.out_avals} -> "
                         f"{new.out_avals}")
  return new


def _eval(jaxpr, consts, args, rules) -> list:
  """Evaluates ``jaxpr`` on ``args`` (under the caller's trace), applying ``rules``."""
  env = {}

  def read(v):
    return v.val if isinstance(v, jax_core.Literal) else env[v]

  for v, x in zip(jaxpr.constvars, consts):
    env[v] = x
  for v, x in zip(jaxpr.invars, args):
    env[v] = x
  for eqn in jaxpr.eqns:
    inputs = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    # The equation's source location: the programs' ops keep pointing at the model's code.
    with source_info_util.user_context(eqn.source_info.traceback,
                                       name_stack=eqn.source_info.name_stack):
      if name in rules and rules[name][0](eqn):
        out = rules[name][1](eqn, *inputs)
      elif name in _INLINED and _closed(eqn.params.get(_INLINED[name])):
        body = eqn.params[_INLINED[name]]
        out = _eval(body.jaxpr, body.consts, inputs, rules)
      else:
        params = dict(eqn.params)
        for key, value in params.items():
          if _closed(value):
            params[key] = _rewrite_closed(value, rules)
          elif isinstance(value, tuple) and value and all(_closed(v) for v in value):
            params[key] = tuple(_rewrite_closed(v, rules) for v in value)
        out = eqn.primitive.bind(*inputs, **eqn.primitive.get_bind_params(params))
    if not eqn.primitive.multiple_results and name not in _INLINED:
      out = [out]
    for v, x in zip(eqn.outvars, out):
      if not isinstance(v, jax_core.DropVar):
        env[v] = x
  return [read(v) for v in jaxpr.outvars]


def _rewritten(fn: Callable, rules) -> Callable:
  """``fn`` (arrays in, a pytree of arrays out) with the primitives of ``rules`` replaced."""

  def wrapped(*args):
    flat, tree = jax.tree.flatten(args)
    avals = [jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)) for x in flat]
    closed, out_shape = jax.make_jaxpr(
        lambda *f: fn(*jax.tree.unflatten(tree, f)), return_shape=True)(*avals)
    out = _eval(closed.jaxpr, closed.consts, flat, rules)
    return jax.tree.unflatten(jax.tree.structure(out_shape), out)

  return wrapped


def _one_at_a_time(fn: Callable) -> Callable:
  """``fn(variables, *inputs)`` run on the examples of the batch one by one (a loop whose
  body has static shapes; each example taken with TFLite's ``GATHER``), outputs stacked."""

  def looped(variables, *inputs):
    batch = inputs[0].shape[0]
    one = [jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype) for x in inputs]
    shapes = jax.eval_shape(fn, variables, *one)
    init = {k: jnp.zeros((batch, *s.shape[1:]), s.dtype) for k, s in shapes.items()}

    def body(i, outs):
      out = fn(variables, *(_tfl_take(x, i) for x in inputs))
      return {k: jax.lax.dynamic_update_slice_in_dim(outs[k], out[k], i, axis=0)
              for k in outs}

    return jax.lax.fori_loop(0, batch, body, init)

  return looped


def _program(spec: ServingSpec, target: str) -> tuple[Callable, bool]:
  """``(fn, changed)``: the serving function as written for ``target`` (``'tensorflow'``:
  the SavedModel TensorFlow runs; ``'tflite'``: the SavedModel TFLite is converted from),
  and whether it differs from ``spec.fn``."""
  rules = _TENSORFLOW_RULES if target == "tensorflow" else _TFLITE_RULES
  per_example = target == "tflite" and spec.fn in _PER_EXAMPLE_ON_TFLITE
  args = [jax.ShapeDtypeStruct((1, *s.shape[1:]), s.dtype) for s in spec.inputs]
  if not per_example and not _uses(jax.make_jaxpr(spec.fn)(spec.variables, *args).jaxpr,
                                   rules):
    return spec.fn, False
  fn = _rewritten(spec.fn, rules)
  return (_one_at_a_time(fn) if per_example else fn), True


def export_stablehlo(spec: ServingSpec, path: str | os.PathLike | None = None, *,
                     platforms: Sequence[str] = PLATFORMS) -> jax.export.Exported:
  """``jax.export`` of ``spec`` with a symbolic batch; written to ``path`` when given.

  The variables are constants of the program. The result's ``call(**inputs)`` (also after
  ``jax.export.deserialize(path.read_bytes())``, in any process with JAX) takes the named
  inputs of any batch size and returns the dict of outputs.
  """
  fn = jax.jit(_keyword_fn(spec))
  exported = _in_own_thread(
      lambda: jax.export.export(fn, platforms=tuple(platforms))(**_symbolic_args(spec)))
  if path is not None:
    pathlib.Path(path).write_bytes(exported.serialize())
  return exported


def to_saved_model(spec: ServingSpec, path: str | os.PathLike, *,
                   platforms: Sequence[str] = PLATFORMS, for_tflite: bool = False
                   ) -> pathlib.Path:
  """Writes ``spec`` as a TensorFlow SavedModel (``jax2tf``, native serialization).

  The ``serving_default`` signature takes the named inputs (batch of any size) and returns
  the named outputs; the variables are ``tf.Variable``s of the model. Any existing ``path``
  is replaced. The program is the serving function with the formulations TensorFlow reads
  (``top_k`` as a sort).

  ``for_tflite``: instead, the program for :func:`to_tflite` (``top_k`` and the batch's
  per-example gather as TFLite ops carried by custom calls, a detector's examples one at a
  time, ...; see the section "Programs for TensorFlow and TFLite"); TensorFlow cannot run it.
  """
  return _in_own_thread(_write_saved_model, spec, pathlib.Path(path), tuple(platforms),
                        "tflite" if for_tflite else "tensorflow")


def _write_saved_model(spec: ServingSpec, path: pathlib.Path, platforms,
                       target: str = "tensorflow") -> pathlib.Path:
  import tensorflow as tf
  from jax.experimental import jax2tf

  fn, _ = _program(spec, target)
  poly = [None] + [f"({', '.join(['b', *map(str, s.shape[1:])])})" for s in spec.inputs]
  checks = ([jax.export.DisabledSafetyCheck.custom_call(op) for op in _TFL_OPS]
            if target == "tflite" else [])
  converted = jax2tf.convert(fn, polymorphic_shapes=poly, with_gradient=False,
                             native_serialization_platforms=platforms,
                             native_serialization_disabled_checks=checks)
  module = tf.Module()
  module.variables_ = tf.nest.map_structure(
      lambda a: tf.Variable(a, trainable=False), spec.variables)
  signature = [tf.TensorSpec([None, *s.shape[1:]], getattr(tf, s.dtype), name=s.name)
               for s in spec.inputs]

  @tf.function(autograph=False, input_signature=signature)
  def serve(*inputs):
    return dict(converted(module.variables_, *inputs))

  module.serve = serve
  if path.exists():
    shutil.rmtree(path)
  tf.saved_model.save(module, str(path), signatures={"serving_default": serve})
  return path


@contextlib.contextmanager
def _quiet():
  """Silences TF's Python deprecation warnings (the TFLite interpreter's move to LiteRT)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", UserWarning)
    warnings.simplefilter("ignore", FutureWarning)
    yield


def to_tflite(saved_model_dir: str | os.PathLike, path: str | os.PathLike, *,
              quantize: str | None = None) -> pathlib.Path:
  """Converts a SavedModel (:func:`to_saved_model`) to TFLite.

  Args:
    saved_model_dir: the SavedModel; its ``serving_default`` signature is converted (the
      TFLite file keeps its input and output names and the dynamic batch).
    path: the ``.tflite`` file to write.
    quantize: None (float32) or ``'dynamic_int8'`` (weights stored as int8 and dequantised
      or used by int8 kernels at run time; activations float).

  Raises:
    UnsupportedOpError: the converter cannot express an op of the program (named).
  """
  import tensorflow as tf
  if quantize not in (None, "dynamic_int8"):
    raise ValueError(f"quantize must be None or 'dynamic_int8'; found {quantize!r}")
  with _quiet():
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir),
                                                         signature_keys=["serving_default"])
    if quantize == "dynamic_int8":
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
      flatbuffer = converter.convert()
    except Exception as e:  # pylint: disable=broad-except
      if type(e).__name__ != "ConverterError":
        raise
      raise UnsupportedOpError(
          f"TFLite cannot convert {saved_model_dir}: {_converter_problem(str(e))} (export() "
          f"converts the program to_saved_model(..., for_tflite=True) writes)") from None
  path = pathlib.Path(path)
  path.write_bytes(flatbuffer)
  return path


def _converter_problem(message: str) -> str:
  """The first op TFLite's converter failed on, from its error message, in one line."""
  for pattern, what in (
      (r"'([\w.]+)' op is neither a custom op nor a flex op", "op {} has no TFLite kernel"),
      (r"'([\w.]+)' op is not part of the vhlo support", "op {} has no TFLite form"),
      (r"'([\w.]+)' op Dynamic shaped operand is not supported",
       "op {} of an operand of dynamic shape (the batch) has no TFLite form"),
      (r"unregistered operation '([\w.]+)'",
       "op {} is newer than the StableHLO TensorFlow reads")):
    found = re.search(pattern, message)
    if found:
      return what.format(found.group(1))
  lines = [line.strip() for line in message.splitlines() if "error" in line.lower()]
  return (lines or [message.strip().splitlines()[0]])[0][:300]


def _tflite_interpreter(path: str | os.PathLike, num_threads: int | None = None):
  """A TFLite interpreter of ``path``: LiteRT's (``ai_edge_litert``) when installed, else
  TensorFlow's (deprecated in favour of LiteRT; its warning is silenced)."""
  try:
    from ai_edge_litert import interpreter as litert
    return litert.Interpreter(model_path=str(path), num_threads=num_threads)
  except ImportError:
    import tensorflow as tf
    with _quiet():
      return tf.lite.Interpreter(model_path=str(path), num_threads=num_threads)


def to_onnx(tflite_path: str | os.PathLike, path: str | os.PathLike, *,
            opset: int = ONNX_OPSET) -> pathlib.Path:
  """Converts a float32 TFLite model (:func:`to_tflite`) to ONNX with ``tf2onnx``.

  The graph's inputs and outputs get the TFLite signature's names (the spec's names, e.g.
  ``images`` and ``probabilities``); the batch axis stays dynamic. Checked with
  ``onnx.checker``.

  Raises:
    UnsupportedOpError: the TFLite model holds an op tf2onnx cannot read (named).
  """
  tf2onnx = _require("tf2onnx", "ONNX export")
  onnx = _require("onnx", "ONNX export")
  _register_onnx_handlers()
  interpreter = _tflite_interpreter(tflite_path)
  signature = interpreter.get_signature_runner()
  inputs = {v["name"]: k for k, v in signature.get_input_details().items()}
  outputs = {v["name"]: k for k, v in signature.get_output_details().items()}
  with _quiet(), tempfile.TemporaryDirectory() as tmp:
    try:
      model, _ = tf2onnx.convert.from_tflite(
          str(tflite_path), input_names=list(inputs), output_names=list(outputs), opset=opset,
          custom_rewriter=[_onnx_rewriter], output_path=os.path.join(tmp, "model.onnx"))
    except ValueError as e:
      code = re.search(r"Can't lookup value (\d+) for tflite enum BuiltinOperator", str(e))
      if code is None:
        raise
      raise UnsupportedOpError(f"tf2onnx cannot read TFLite op {_tflite_op_name(int(code[1]))} "
                               f"of {tflite_path}") from None
  _rename_onnx_values(model, {**inputs, **outputs})
  onnx.checker.check_model(model)
  path = pathlib.Path(path)
  onnx.save(model, str(path))
  return path


def _tflite_op_name(code: int) -> str:
  try:
    from tensorflow.lite.python import schema_py_generated as schema
  except ImportError:
    return f"#{code}"
  names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
  return names.get(code, f"#{code}")


# -- tf2onnx additions (what its TFLite path lacks or gets wrong for our programs). ------------
# Applied through ``from_tflite(custom_rewriter=...)``: the rewriter runs after TFLite's ops are
# mapped to TF's and before those are converted to ONNX; it renames two ops to handlers
# registered here under names of our own (``Jv...``), so tf2onnx's own handlers are untouched.

_ONNX_RENAMES = {
    # Missing in tf2onnx: written by a rolled ``lax.scan`` stacking its outputs (LSTMs).
    "TFL_DYNAMIC_UPDATE_SLICE": "JvDynamicUpdateSlice",
    # tf2onnx's version computes wrong products for segment ids such as [0, 0, 0, 1] (TFLite
    # computes the shapes of a matrix product's reshapes with it), so a batched matmul of a
    # rank > 2 operand fails at any batch size but the traced one.
    "UnsortedSegmentProd": "JvUnsortedSegmentProd",
}


def _onnx_rewriter(graph, ops):
  """tf2onnx custom rewriter: every ``Select`` becomes ONNX ``Where`` (tf2onnx otherwise
  writes a float select as ``cond * x + (1 - cond) * y`` unless a NaN or infinite constant
  feeds it directly, turning the NaN/inf of the branch not taken into NaN, e.g. a gather's
  out-of-bounds fill in ``nn.Embed``); the ops of :data:`_ONNX_RENAMES` get our handlers."""
  del graph
  for op in ops:
    if op.type in ("Select", "SelectV2"):
      op.set_attr("handles_nan", True)
    elif op.type in _ONNX_RENAMES:
      op.type = _ONNX_RENAMES[op.type]
  return ops


_onnx_handlers_registered = False


def _register_onnx_handlers() -> None:
  """Registers the ONNX handlers of ``JvDynamicUpdateSlice`` and ``JvUnsortedSegmentProd``."""
  global _onnx_handlers_registered
  if _onnx_handlers_registered:
    return
  import onnx
  from tf2onnx import graph_builder, handler, utils

  def int64(ctx, name):
    if ctx.get_dtype(name) == onnx.TensorProto.INT64:
      return name
    return ctx.make_node("Cast", [name], attr={"to": onnx.TensorProto.INT64}).output[0]

  class DynamicUpdateSlice:
    """XLA's ``dynamic_update_slice(x, update, start)``: ``update`` written into ``x`` at
    ``start`` clamped to ``[0, shape(x) - shape(update)]``, as ``Where(mask, padded update,
    x)`` with the update and a mask of ones padded to ``x``'s shape."""

    @classmethod
    def version_11(cls, ctx, node, **kwargs):
      del kwargs
      x, update, start = node.input
      dtype = ctx.get_dtype(x)
      shape_x = ctx.make_node("Shape", [x]).output[0]
      shape_u = ctx.make_node("Shape", [update]).output[0]
      room = ctx.make_node("Sub", [shape_x, shape_u]).output[0]
      zero = ctx.make_const(utils.make_name("zero"), np.array(0, np.int64)).output[0]
      start = ctx.make_node("Min", [int64(ctx, start), room]).output[0]
      start = ctx.make_node("Max", [start, zero]).output[0]
      after = ctx.make_node("Sub", [room, start]).output[0]
      pads = ctx.make_node("Concat", [start, after], attr={"axis": 0}).output[0]
      one = onnx.helper.make_tensor("value", dtype, [1], [1])
      ones = ctx.make_node("ConstantOfShape", [shape_u], attr={"value": one}).output[0]
      mask = ctx.make_node("Pad", [ones, pads]).output[0]
      mask = ctx.make_node("Cast", [mask], attr={"to": onnx.TensorProto.BOOL}).output[0]
      padded = ctx.make_node("Pad", [update, pads]).output[0]
      node.type = "Where"
      ctx.replace_inputs(node, [mask, padded, x])

  class UnsortedSegmentProd:
    """``out[k] = prod(data[i] for i with ids[i] == k)`` for 1-D ``data``: a one-hot
    ``[num_segments, n]`` mask, ``Where(mask, data, 1)``, ``ReduceProd`` over ``n``."""

    @classmethod
    def version_11(cls, ctx, node, **kwargs):
      del kwargs
      data, ids, num = node.input
      utils.make_sure(ctx.get_rank(data) == 1, "JvUnsortedSegmentProd: 1-D data only")
      num = graph_builder.GraphBuilder(ctx).make_squeeze(
          {"data": ctx.make_node("Reshape", [int64(ctx, num), ctx.make_const(
              utils.make_name("shape"), np.array([1], np.int64)).output[0]]).output[0],
           "axes": [0]})
      zero = ctx.make_const(utils.make_name("zero"), np.array(0, np.int64)).output[0]
      step = ctx.make_const(utils.make_name("one"), np.array(1, np.int64)).output[0]
      segments = ctx.make_node("Range", [zero, num, step]).output[0]
      gb = graph_builder.GraphBuilder(ctx)
      mask = ctx.make_node("Equal", [gb.make_unsqueeze({"data": segments, "axes": [1]}),
                                     gb.make_unsqueeze({"data": int64(ctx, ids),
                                                        "axes": [0]})]).output[0]
      dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(data))
      one = ctx.make_const(utils.make_name("one"), np.array(1, dtype)).output[0]
      rows = ctx.make_node("Where", [mask, gb.make_unsqueeze({"data": data, "axes": [0]}),
                                     one]).output[0]
      product = gb.make_reduce_prod({"data": rows, "axes": [1], "keepdims": 0})
      node.type = "Identity"
      ctx.replace_inputs(node, [product])

  handler.tf_op(["JvDynamicUpdateSlice"])(DynamicUpdateSlice)
  handler.tf_op(["JvUnsortedSegmentProd"])(UnsortedSegmentProd)
  _onnx_handlers_registered = True


def _rename_onnx_values(model, names: Mapping[str, str]) -> None:
  """Renames the graph's values ``old -> new`` everywhere they appear (in place)."""
  graph = model.graph
  for value in list(graph.input) + list(graph.output) + list(graph.value_info):
    value.name = names.get(value.name, value.name)
  for node in graph.node:
    node.input[:] = [names.get(n, n) for n in node.input]
    node.output[:] = [names.get(n, n) for n in node.output]


# -- Running exported files. ---------------------------------------------------------------------


def load(path: str | os.PathLike, *, num_threads: int | None = None
         ) -> Callable[..., dict[str, np.ndarray]]:
  """Loads an exported file as ``run(**inputs) -> {output name: np.ndarray}``.

  ``path``: a ``.stablehlo`` file (run by JAX), a SavedModel folder (TensorFlow), a
  ``.tflite`` file (LiteRT, else TensorFlow's interpreter) or a ``.onnx`` file (ONNX
  Runtime). Inputs are NumPy arrays of the spec's dtypes, any batch size.
  ``num_threads``: for TFLite and ONNX Runtime (default: theirs).
  """
  path = pathlib.Path(path)
  if path.suffix == ".stablehlo":
    exported = jax.export.deserialize(bytearray(path.read_bytes()))
    call = jax.jit(exported.call)
    return lambda **inputs: {k: np.asarray(v) for k, v in call(**inputs).items()}
  if path.is_dir() and (path / "saved_model.pb").is_file():
    import tensorflow as tf
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    return lambda **inputs: {k: v.numpy() for k, v in serve(**{
        n: tf.constant(x) for n, x in inputs.items()}).items()}
  if path.suffix == ".tflite":
    runner = _tflite_interpreter(path, num_threads).get_signature_runner()
    return lambda **inputs: {k: np.asarray(v) for k, v in runner(**inputs).items()}
  if path.suffix == ".onnx":
    ort = _require("onnxruntime", "running ONNX files")
    options = ort.SessionOptions()
    if num_threads:
      options.intra_op_num_threads = num_threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda **inputs: dict(zip(names, session.run(names, inputs)))
  raise ValueError(f"expected a .stablehlo, .tflite or .onnx file or a SavedModel folder; "
                   f"found {path}")


def example_inputs(spec: ServingSpec, batch_size: int = 2, seed: int = 0
                   ) -> dict[str, np.ndarray]:
  """Random inputs of ``spec`` (``batch_size`` examples): integers uniform in ``[minval,
  maxval]``, floats uniform in ``[minval, maxval]`` or standard normal."""
  rng = np.random.default_rng(seed)
  out = {}
  for s in spec.inputs:
    shape, dtype = (batch_size, *s.shape[1:]), _DTYPES[s.dtype]
    if np.issubdtype(dtype, np.integer):
      lo = 0 if s.minval is None else int(s.minval)
      hi = np.iinfo(dtype).max if s.maxval is None else int(s.maxval)
      out[s.name] = rng.integers(lo, hi, shape, endpoint=True).astype(dtype)
    elif s.minval is not None and s.maxval is not None:
      out[s.name] = rng.uniform(s.minval, s.maxval, shape).astype(dtype)
    else:
      out[s.name] = rng.standard_normal(shape).astype(dtype)
  return out


def max_abs_diff(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
  """The largest ``|a[k] - b[k]|`` over the outputs (float64); a missing output raises."""
  if set(a) != set(b):
    raise ExportMismatchError(f"outputs {sorted(a)} differ from {sorted(b)}")
  return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64))))
             for k in a)


def reference_outputs(spec: ServingSpec, inputs: Mapping[str, np.ndarray]
                      ) -> dict[str, np.ndarray]:
  """The JAX function's outputs on ``inputs`` (jitted, as the default path traces it)."""
  out = jax.jit(spec.fn)(spec.variables, *(inputs[s.name] for s in spec.inputs))
  return {k: np.asarray(v) for k, v in out.items()}


# -- Everything at once. -------------------------------------------------------------------------


def _size(path: pathlib.Path) -> int:
  if path.is_dir():
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
  return path.stat().st_size


def _versions(formats) -> dict:
  import importlib.metadata as md
  names = ["jax"] + (["tensorflow"] if set(formats) - {"stablehlo"} else [])
  names += ["tf2onnx", "onnx", "onnxruntime"] if "onnx" in formats else []
  out = {}
  for n in names:
    for dist in (n, f"{n}-cpu"):
      try:
        out[n] = md.version(dist)
        break
      except md.PackageNotFoundError:
        continue
  return out


def export(spec: ServingSpec, out_dir: str | os.PathLike, *,
           formats: Sequence[str] = FORMATS, platforms: Sequence[str] = PLATFORMS,
           verify: bool = True) -> dict:
  """Writes ``spec`` in ``formats`` (any of :data:`ALL_FORMATS`) into ``out_dir`` with a
  summary ``export.json``; returns the summary.

  TFLite is converted from the SavedModel and ONNX from the float32 TFLite model; those are
  made in a temporary folder when not asked for. With ``verify``, each file is loaded and run
  on :func:`example_inputs` (batch 2; the StableHLO at batch 3 too) and its
  ``max_abs_diff`` to the JAX function recorded; a float32 format off by more than
  ``PARITY_TOLERANCE * max(1, max |output|)`` raises :class:`ExportMismatchError`.

  Summary: ``model``, ``inputs`` / ``outputs`` (names, shapes with None for the batch,
  dtypes), ``metadata``, ``platforms``, ``versions`` and ``files``: per format ``{'path',
  'bytes', 'max_abs_diff'?}``.

  Raises:
    ValueError: an unknown format. MissingExtraError: ONNX without the ``export`` extra.
  """
  formats = list(dict.fromkeys(formats))
  unknown = [f for f in formats if f not in ALL_FORMATS]
  if unknown or not formats:
    raise ValueError(f"formats must be some of {ALL_FORMATS}; found {list(formats)}")
  if "onnx" in formats:  # fail before minutes of conversion, not after
    for module in ("tf2onnx", "onnx", "onnxruntime"):
      _require(module, "ONNX export")
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  files: dict[str, pathlib.Path] = {}
  with tempfile.TemporaryDirectory() as tmp:
    def where(fmt):
      return (out_dir if fmt in formats else pathlib.Path(tmp)) / FILE_NAMES[fmt]

    if "stablehlo" in formats:
      files["stablehlo"] = where("stablehlo")
      export_stablehlo(spec, files["stablehlo"], platforms=platforms)
    saved = None
    if "saved_model" in formats:
      saved = files["saved_model"] = to_saved_model(spec, where("saved_model"),
                                                    platforms=platforms)
    needs_tflite = "tflite" in formats or "onnx" in formats
    if needs_tflite or "tflite_int8" in formats:
      if _in_own_thread(_program, spec, "tflite")[1]:  # TFLite's program differs
        source = to_saved_model(spec, pathlib.Path(tmp) / "saved_model_tflite",
                                platforms=platforms, for_tflite=True)
      else:
        source = saved or to_saved_model(spec, where("saved_model"), platforms=platforms)
      if needs_tflite:
        tflite = to_tflite(source, where("tflite"))
        if "tflite" in formats:
          files["tflite"] = tflite
        if "onnx" in formats:
          files["onnx"] = to_onnx(tflite, where("onnx"))
      if "tflite_int8" in formats:
        files["tflite_int8"] = to_tflite(source, where("tflite_int8"), quantize="dynamic_int8")
    summary = {
        "model": spec.name,
        "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype}
                   for s in spec.inputs],
        "outputs": list(spec.outputs),
        "metadata": dict(spec.metadata),
        "platforms": list(platforms),
        "versions": _versions(formats),
        "files": {fmt: {"path": files[fmt].name, "bytes": _size(files[fmt])}
                  for fmt in ALL_FORMATS if fmt in files},
    }
    if verify:
      _verify(spec, files, summary["files"])
  (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
  return summary


def _verify(spec: ServingSpec, files: Mapping[str, pathlib.Path], records: dict) -> None:
  """Runs each file on example inputs: every output within ``PARITY_TOLERANCE * max(1,
  max |reference output|)`` of the JAX function's (float32 formats); a detector's as
  :func:`_detection_diffs` compares them."""
  batches = {fmt: (2, 3) if fmt == "stablehlo" else (2,) for fmt in files}
  for fmt, path in files.items():
    run = load(path)
    worst = 0.0
    for batch in batches[fmt]:
      inputs = example_inputs(spec, batch, seed=batch)
      ref = reference_outputs(spec, inputs)
      got = run(**inputs)
      max_abs_diff(got, ref)  # the same outputs
      tolerance = {k: PARITY_TOLERANCE * max(1.0, float(np.max(np.abs(v)))) for k, v in ref.items()}
      if set(ref) == set(DETECTION_OUTPUTS):
        diffs = _detection_diffs(got, ref, tolerance)
      else:
        diffs = {k: max_abs_diff({k: got[k]}, {k: ref[k]}) for k in ref}
      bad = [k for k in diffs if not diffs[k] <= tolerance.get(k, 0.0)]
      if fmt != "tflite_int8" and bad:
        raise ExportMismatchError(
            f"{fmt} export of {spec.name} differs from the JAX function in {bad[0]} by "
            f"{diffs[bad[0]]:.3g} at batch {batch} (tolerance {tolerance.get(bad[0], 0):.3g}); "
            f"{path} was written")
      worst = max([worst, *(d for d in diffs.values() if np.isfinite(d))])
    records[fmt]["max_abs_diff"] = worst


def _detection_diffs(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray],
                     tolerance: Mapping[str, float]) -> dict[str, float]:
  """Largest differences between two sets of padded detections, kept box by kept box.

  ``num_valid`` must agree per image (else its entry is inf). Kept detections are compared in
  order; where the order differs (two scores closer than float error: other summation orders
  rank them the other way), each detection is matched to one of the same class whose score
  is within ``tolerance['scores']`` (the closest box); a detection without one makes the
  ``boxes`` entry inf. The padding is compared slot by slot.
  """
  boxes = np.asarray(got["boxes"], np.float64), np.asarray(ref["boxes"], np.float64)
  scores = np.asarray(got["scores"], np.float64), np.asarray(ref["scores"], np.float64)
  classes = np.asarray(got["classes"]), np.asarray(ref["classes"])
  diffs = {"num_valid": max_abs_diff({"n": got["num_valid"]}, {"n": ref["num_valid"]}),
           "boxes": 0.0, "scores": 0.0, "classes": 0.0}
  if diffs["num_valid"]:
    return dict(diffs, num_valid=np.inf)
  for b, n in enumerate(np.asarray(ref["num_valid"])):
    pairs = list(zip(range(n), range(n)))
    in_order = (np.array_equal(classes[0][b, :n], classes[1][b, :n])
                and np.all(np.abs(scores[0][b, :n] - scores[1][b, :n]) <= tolerance["scores"])
                and np.all(np.abs(boxes[0][b, :n] - boxes[1][b, :n]) <= tolerance["boxes"]))
    if not in_order:
      free, pairs = set(range(n)), []
      for i in range(n):
        near = [j for j in free if classes[1][b, j] == classes[0][b, i]
                and abs(scores[1][b, j] - scores[0][b, i]) <= tolerance["scores"]]
        if not near:
          return dict(diffs, boxes=np.inf)
        j = min(near, key=lambda j: np.max(np.abs(boxes[1][b, j] - boxes[0][b, i])))
        free.remove(j)
        pairs.append((i, j))
    pairs += [(k, k) for k in range(n, ref["scores"].shape[1])]  # the padding
    i, j = (np.asarray([p[0] for p in pairs], int), np.asarray([p[1] for p in pairs], int))
    for key, (a, r) in (("boxes", boxes), ("scores", scores), ("classes", classes)):
      diffs[key] = max(diffs[key], float(np.max(np.abs(a[b, i].astype(np.float64) - r[b, j]),
                                                initial=0.0)))
  return diffs


def export_mode(task: Task, workdir, *, formats: Sequence[str] = FORMATS,
                export_dir: str | os.PathLike | None = None, checkpoint: str = "best") -> dict:
  """``--mode=export`` (a method of the tasks that list ``'export'`` in their modes): writes
  the serving function of the workdir's best (or latest) checkpoint in ``formats`` into
  ``export_dir`` (default ``<workdir>/export``); returns :func:`export`'s summary plus
  ``workdir``, ``checkpoint_step`` and ``export_dir``."""
  if isinstance(formats, str):
    formats = [f.strip() for f in formats.split(",") if f.strip()]
  unknown = [f for f in formats if f not in ALL_FORMATS]
  if unknown or not formats:
    raise ValueError(f"--formats must be some of {','.join(ALL_FORMATS)}; found "
                     f"{','.join(formats) or 'none'}")
  restored = trainer.restore(task, workdir, checkpoint)
  spec = _task_serving(task, restored)
  out_dir = pathlib.Path(export_dir) if export_dir else pathlib.Path(workdir) / "export"
  if jax.process_index() != 0:
    return {}
  summary = export(spec, out_dir, formats=formats)
  summary = {"workdir": str(pathlib.Path(workdir).resolve()),
             "checkpoint_step": restored.step, "export_dir": str(out_dir.resolve()), **summary}
  (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
  return summary


def export_workdir(workdir, *, formats: Sequence[str] = FORMATS,
                   out_dir: str | os.PathLike | None = None, checkpoint: str = "best") -> dict:
  """Exports a trained workdir of any task with a serving function (its ``config.json``, the
  best or latest checkpoint) into ``out_dir`` (default ``<workdir>/export``); see
  :func:`export_mode`."""
  task = tasks.create_task(trainer.load_config(workdir))
  return export_mode(task, workdir, formats=formats, export_dir=out_dir, checkpoint=checkpoint)
