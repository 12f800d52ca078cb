"""Export trained models for serving: StableHLO, TensorFlow SavedModel, TFLite and ONNX.

>>> from jaxvision import export
>>> export.export_workdir("runs/mnist")                  # every format into runs/mnist/export/
>>> spec = export.classifier_serving(model, variables, image_shape=(28, 28, 1),
...                                  pp="value_range(0, 1)")     # or from params in code
>>> export.export(spec, "out/", formats=("stablehlo", "onnx"))
>>> run = export.load("out/model.onnx"); run(images=uint8_images)["probabilities"]

What is exported is a task's :class:`ServingSpec` (``Task.serving``; or built in code with
:func:`classifier_serving`, :func:`generator_serving`, :func:`sequence_serving`): a pure JAX
function of named inputs whose first axis is the batch, any preprocessing included, returning
named outputs. Every format takes any batch size:

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

What is served is the model as trained, in float32 and inference mode, with three rewrites
that keep its values and only change how TFLite and ONNX see it: flax ``avg_pool`` fields
(``LeNet5``) become depthwise convolutions, a forecaster's scans are unrolled, and the
exporter's preprocessing gathers with static slices.

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
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision import tasks
from jaxvision.data import preprocess
from jaxvision.training import trainer
from jaxvision.training.task import ServingSpec, Task, TensorSpec

__all__ = [
    "FORMATS", "ALL_FORMATS", "PLATFORMS", "ExportMismatchError", "MissingExtraError",
    "ServingSpec", "TensorSpec", "classifier_serving", "generator_serving", "sequence_serving",
    "preprocessing_fn", "serving_from_workdir", "export_stablehlo", "to_saved_model",
    "to_tflite", "to_onnx", "export", "export_workdir", "export_mode", "load",
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


class ExportMismatchError(RuntimeError):
  """An exported file's outputs differ from the JAX function's beyond the tolerance."""


class MissingExtraError(ImportError):
  """A package of the optional ``export`` extra is not installed."""


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
                   platforms: Sequence[str] = PLATFORMS) -> pathlib.Path:
  """Writes ``spec`` as a TensorFlow SavedModel (``jax2tf``, native serialization).

  The ``serving_default`` signature takes the named inputs (batch of any size) and returns
  the named outputs; the variables are ``tf.Variable``s of the model. Any existing ``path``
  is replaced.
  """
  return _in_own_thread(_write_saved_model, spec, pathlib.Path(path), tuple(platforms))


def _write_saved_model(spec: ServingSpec, path: pathlib.Path, platforms) -> pathlib.Path:
  import tensorflow as tf
  from jax.experimental import jax2tf

  poly = [None] + [f"({', '.join(['b', *map(str, s.shape[1:])])})" for s in spec.inputs]
  converted = jax2tf.convert(spec.fn, polymorphic_shapes=poly, with_gradient=False,
                             native_serialization_platforms=platforms)
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
  """
  import tensorflow as tf
  if quantize not in (None, "dynamic_int8"):
    raise ValueError(f"quantize must be None or 'dynamic_int8'; found {quantize!r}")
  with _quiet():
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir),
                                                         signature_keys=["serving_default"])
    if quantize == "dynamic_int8":
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
    flatbuffer = converter.convert()
  path = pathlib.Path(path)
  path.write_bytes(flatbuffer)
  return path


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
  """
  tf2onnx = _require("tf2onnx", "ONNX export")
  onnx = _require("onnx", "ONNX export")
  _register_onnx_handlers()
  interpreter = _tflite_interpreter(tflite_path)
  signature = interpreter.get_signature_runner()
  inputs = {v["name"]: k for k, v in signature.get_input_details().items()}
  outputs = {v["name"]: k for k, v in signature.get_output_details().items()}
  with _quiet(), tempfile.TemporaryDirectory() as tmp:
    model, _ = tf2onnx.convert.from_tflite(
        str(tflite_path), input_names=list(inputs), output_names=list(outputs), opset=opset,
        custom_rewriter=[_onnx_rewriter], output_path=os.path.join(tmp, "model.onnx"))
  _rename_onnx_values(model, {**inputs, **outputs})
  onnx.checker.check_model(model)
  path = pathlib.Path(path)
  onnx.save(model, str(path))
  return path


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
    needs_tflite = "tflite" in formats or "onnx" in formats
    if "saved_model" in formats or needs_tflite or "tflite_int8" in formats:
      saved = to_saved_model(spec, where("saved_model"), platforms=platforms)
      if "saved_model" in formats:
        files["saved_model"] = saved
      if needs_tflite:
        tflite = to_tflite(saved, where("tflite"))
        if "tflite" in formats:
          files["tflite"] = tflite
        if "onnx" in formats:
          files["onnx"] = to_onnx(tflite, where("onnx"))
      if "tflite_int8" in formats:
        files["tflite_int8"] = to_tflite(saved, where("tflite_int8"), quantize="dynamic_int8")
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
  batches = {fmt: (2, 3) if fmt == "stablehlo" else (2,) for fmt in files}
  for fmt, path in files.items():
    run = load(path)
    worst = 0.0
    for batch in batches[fmt]:
      inputs = example_inputs(spec, batch, seed=batch)
      ref = reference_outputs(spec, inputs)
      diff = max_abs_diff(run(**inputs), ref)
      scale = max(1.0, max(float(np.max(np.abs(v))) for v in ref.values()))
      if fmt != "tflite_int8" and not diff <= PARITY_TOLERANCE * scale:
        raise ExportMismatchError(
            f"{fmt} export of {spec.name} differs from the JAX function by {diff:.3g} at batch "
            f"{batch} (tolerance {PARITY_TOLERANCE * scale:.3g}); {path} was written")
      worst = max(worst, diff)
    records[fmt]["max_abs_diff"] = worst


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
