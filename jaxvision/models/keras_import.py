"""Keras Applications weights for our VGG16 and ResNet50.

``from_keras(name, path, input_shape=..., num_classes=...)`` reads a weight file of
``keras.applications.VGG16`` or ``keras.applications.ResNet50`` and returns our model built to
compute the same function, with the file's weights::

    model, variables = from_keras("ResNet50", "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
                                  input_shape=(224, 224, 3))
    logits, out = model.apply(variables, images, train=False)   # images: keras_preprocess'ed

Two file layouts are read (both HDF5, read with ``h5py``):

* the legacy Keras 2 layout of the files ``keras.applications`` downloads
  (``vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5``,
  ``resnet50_weights_tf_dim_ordering_tf_kernels[_notop].h5``): root attribute ``layer_names``,
  one group per layer with attribute ``weight_names``, datasets
  ``<layer>/<layer>/kernel:0``; also found under ``model_weights/`` in whole-model ``.h5`` files;
* Keras 3's ``.weights.h5`` (``model.save_weights("x.weights.h5")``): ``layers/<class name>[_k]/
  vars/<i>``, the layer's own name in the ``vars`` group's ``name`` attribute where the file
  stores it (Keras 3.15 does; files without it are matched by Keras's layer order).

Keras's arrays need no transposition: ``Conv2D`` kernels are ``[kh, kw, C_in, C_out]`` and
``Dense`` kernels ``[D_in, D_out]`` as Flax's, and Keras flattens NHWC maps in the same order as
our models. BatchNorm's ``gamma``, ``beta`` become ``params`` ``scale``, ``bias`` and
``moving_mean``, ``moving_variance`` become ``batch_stats`` ``mean``, ``var``.

Keras's ResNet50 is ResNet v1, built here as ``ResNet(stride_in_1x1=True, conv_bias=True,
bn_epsilon=1.001e-5, stem_pool_padding=((1, 1), (1, 1)))``; its VGG16 is ours with
``classifier_width=4096``. Inputs must be preprocessed as Keras's ``preprocess_input`` does:
``keras_preprocess_spec(name)`` gives the pp spec (``jaxvision.data.preprocess``), i.e. 'caffe'
mode: RGB -> BGR and minus the ImageNet mean ``[103.939, 116.779, 123.68]`` on ``[0, 255]``
values.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.models import pretrained
from jaxvision.models.cnn import VGG, VGG_CONFIGS, BottleneckResNetBlock, ResNet

KERAS_MODELS = ("VGG16", "ResNet50")

# Keras's preprocessing (``keras.applications.<module>.preprocess_input``) per model, as a spec
# of jaxvision.data.preprocess (op ``keras_imagenet``).
_PREPROCESS_MODES = {"VGG16": "caffe", "ResNet50": "caffe"}

# Keras's layer classes by the prefix of the layer name, and the variables each one saves, in
# order (Keras 3 ``.weights.h5`` stores them as vars/0, vars/1, ...).
_KINDS = {
    "conv": ("conv2d", ("kernel", "bias")),
    "dense": ("dense", ("kernel", "bias")),
    "bn": ("batch_normalization", ("gamma", "beta", "moving_mean", "moving_variance")),
}
_TOP_LAYERS = {"VGG16": ("fc1", "fc2", "predictions"), "ResNet50": ("predictions",)}
_RESNET50_STAGES = (3, 4, 6, 3)


def _vgg16_layers() -> Iterator[tuple[str, str, tuple[str, ...]]]:
  """(Keras layer, kind, our module path) for VGG16, in Keras's layer order."""
  conv, block, index = 0, 1, 1
  for v in VGG_CONFIGS["vgg16"]:
    if v == "M":
      block, index = block + 1, 1
      continue
    yield f"block{block}_conv{index}", "conv", (f"Conv_{conv}",)
    conv, index = conv + 1, index + 1
  for i, layer in enumerate(_TOP_LAYERS["VGG16"]):
    yield layer, "dense", (f"Dense_{i}",)


def _resnet50_layers() -> Iterator[tuple[str, str, tuple[str, ...]]]:
  """(Keras layer, kind, our module path) for ResNet50, in Keras's layer order.

  Keras orders a block's layers by depth in the graph: the shortcut conv and its BatchNorm
  come right before the main branch's third conv and BatchNorm.
  """
  yield "conv1_conv", "conv", ("conv_init",)
  yield "conv1_bn", "bn", ("bn_init",)
  block = 0
  for stage, size in enumerate(_RESNET50_STAGES):
    for j in range(size):
      prefix, ours = f"conv{stage + 2}_block{j + 1}", f"BottleneckResNetBlock_{block}"
      for i in (1, 2):
        yield f"{prefix}_{i}_conv", "conv", (ours, f"Conv_{i - 1}")
        yield f"{prefix}_{i}_bn", "bn", (ours, f"BatchNorm_{i - 1}")
      if j == 0:
        yield f"{prefix}_0_conv", "conv", (ours, "conv_proj")
      yield f"{prefix}_3_conv", "conv", (ours, "Conv_2")
      if j == 0:
        yield f"{prefix}_0_bn", "bn", (ours, "norm_proj")
      yield f"{prefix}_3_bn", "bn", (ours, "BatchNorm_2")
      block += 1
  yield "predictions", "dense", ("Dense_0",)


_LAYERS = {"VGG16": _vgg16_layers, "ResNet50": _resnet50_layers}


def keras_layers(name: str) -> list[tuple[str, str, tuple[str, ...]]]:
  """``[(keras_layer_name, kind, our_module_path), ...]`` for the weighted layers of Keras's
  ``name`` model with its top, in Keras's ``model.layers`` order; ``kind`` is 'conv', 'dense'
  or 'bn'."""
  _check_name(name)
  return list(_LAYERS[name]())


def keras_preprocess_spec(name: str) -> str:
  """The pp spec (``jaxvision.data.preprocess``) computing Keras's ``preprocess_input`` for
  ``name``: one ``[H, W, 3]`` RGB image, uint8 or float in ``[0, 255]`` -> float32 ``[H, W, 3]``
  (for both models: BGR, minus ``[103.939, 116.779, 123.68]``)."""
  _check_name(name)
  return f"keras_imagenet('{_PREPROCESS_MODES[name]}')"


def keras_model(name: str, num_classes: int | None) -> Any:
  """Our module computing Keras's ``name`` (``num_classes=None``: no top, as ``include_top=
  False``; the first output is then ``out['pre_logits']``)."""
  _check_name(name)
  if name == "VGG16":
    return VGG(layers=VGG_CONFIGS["vgg16"], num_classes=num_classes, classifier_width=4096)
  return ResNet(stage_sizes=_RESNET50_STAGES, block_cls=BottleneckResNetBlock,
                num_classes=num_classes, stem="imagenet", stride_in_1x1=True, conv_bias=True,
                bn_epsilon=1.001e-5, stem_pool_padding=((1, 1), (1, 1)))


def _check_name(name: str):
  if name not in KERAS_MODELS:
    raise ValueError(f"from_keras supports {', '.join(KERAS_MODELS)}; found {name!r}")


def _decode(value) -> str:
  return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _h5_attr_list(group, key: str) -> list[str]:
  """A list attribute as Keras writes it: ``key``, or split in ``key0``, ``key1``, ... when
  too large for one HDF5 attribute."""
  if key in group.attrs:
    return [_decode(v) for v in group.attrs[key]]
  out, k = [], 0
  while f"{key}{k}" in group.attrs:
    out.extend(_decode(v) for v in group.attrs[f"{key}{k}"])
    k += 1
  return out


def _read_legacy(root) -> dict[str, dict[str, np.ndarray]]:
  """``{layer: {variable: array}}`` from the Keras 2 layout (variable: ``kernel``, ``gamma``
  ... , the last part of the weight name without ``:0``)."""
  layers = {}
  for layer in _h5_attr_list(root, "layer_names"):
    group = root[layer]
    weights = {}
    for weight_name in _h5_attr_list(group, "weight_names"):
      short = weight_name.rsplit("/", 1)[-1].split(":", 1)[0]
      weights[short] = np.asarray(group[weight_name], dtype=np.float32)
    if weights:
      layers[layer] = weights
  return layers


def _read_keras3(root, name: str) -> dict[str, dict[str, np.ndarray]]:
  """``{layer: {variable: array}}`` from a Keras 3 ``.weights.h5`` (``layers/*/vars/<i>``)."""
  kinds = {layer: kind for layer, kind, _ in keras_layers(name)}
  groups = []  # (group name, vars group) with variables, in file order
  for group_name, group in root["layers"].items():
    if "vars" in group and len(group["vars"]):
      groups.append((group_name, group["vars"]))
  named = all("name" in g.attrs for _, g in groups)
  if named:
    by_layer = {_decode(g.attrs["name"]): g for _, g in groups}
  else:
    # Without the name attributes a layer's group is named by its class only (conv2d,
    # conv2d_1, ...), numbered in Keras's layer order: match the k-th of each class.
    by_group = dict(groups)
    by_layer, counts = {}, {}
    for layer, kind, _ in keras_layers(name):
      cls = _KINDS[kind][0]
      k = counts.get(cls, 0)
      counts[cls] = k + 1
      group_name = cls if k == 0 else f"{cls}_{k}"
      if group_name in by_group:
        by_layer[layer] = by_group[group_name]
  layers = {}
  for layer, group in by_layer.items():
    variables = _KINDS[kinds[layer]][1] if layer in kinds else tuple(sorted(group))
    layers[layer] = {v: np.asarray(group[str(i)], dtype=np.float32)
                     for i, v in enumerate(variables) if str(i) in group}
  return layers


def read_keras_weights(path: str | os.PathLike, name: str) -> dict[str, dict[str, np.ndarray]]:
  """Reads a Keras weight file (legacy ``.h5`` or Keras 3 ``.weights.h5``, see the module
  docstring) of model ``name``: ``{keras_layer_name: {'kernel'|'bias'|'gamma'|'beta'|
  'moving_mean'|'moving_variance': float32 array}}``, layers without weights left out."""
  import h5py  # pylint: disable=g-import-not-at-top  (only the importer needs it)

  _check_name(name)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no Keras weight file at {os.fspath(path)!r}")
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise ValueError(f"{os.fspath(path)!r} is not an HDF5 Keras weight file: {e}") from None
  with f:
    root = f["model_weights"] if "model_weights" in f else f
    if "layer_names" in root.attrs or "layer_names0" in root.attrs:
      return _read_legacy(root)
    if "layers" in root:
      return _read_keras3(root, name)
    raise ValueError(
        f"{os.fspath(path)!r} is not a Keras weight file: expected a root attribute "
        f"'layer_names' (legacy .h5) or a 'layers' group (Keras 3 .weights.h5); found keys "
        f"{sorted(root.keys())[:10]} and attributes {sorted(root.attrs.keys())[:10]}")


def _names_list(names: list[str], limit: int = 12) -> str:
  shown = ", ".join(names[:limit])
  return shown + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def _assign(target, value: np.ndarray, where: str):
  if tuple(value.shape) != tuple(target.shape):
    raise ValueError(f"{where}: expected shape {tuple(target.shape)} for the model built for "
                     f"this input_shape, found {tuple(value.shape)} in the file")
  return jnp.asarray(value, dtype=target.dtype)


def from_keras(name: str, path: str | os.PathLike, *, input_shape: tuple[int, int, int],
               num_classes: int | None = None, rng: jax.Array | None = None):
  """Our ``name`` model (``'VGG16'`` or ``'ResNet50'``) with the weights of a Keras file.

  Args:
    name: ``'VGG16'`` or ``'ResNet50'`` (``keras.applications.VGG16`` / ``ResNet50``).
    path: a legacy ``.h5`` (as ``keras.applications`` downloads, with or without top) or a Keras
      3 ``.weights.h5`` file of that model.
    input_shape: ``(H, W, 3)`` of the images the model will see (VGG16's ``fc1`` depends on it:
      ``H/32 * W/32 * 512`` inputs, 224x224 for the ImageNet files).
    num_classes: None: as the file (its ``predictions`` width, or no top at all for a
      ``_notop`` file; the model's first output is then ``out['pre_logits']``). An int other
      than the file's, or any int for a ``_notop`` file: a freshly initialised head (VGG16
      ``fc1``, ``fc2`` too when the file has none) of that width.
    rng: key for the fresh head's initialisation (default ``PRNGKey(0)``).

  Returns:
    ``(model, variables)``: ``model.apply(variables, x, train=False)`` with ``x`` ``[B, H, W,
    3]`` preprocessed by ``keras_preprocess_spec(name)`` gives Keras's output before its
    softmax, ``[B, num_classes]`` (``variables``: ``params``, plus ``batch_stats`` for ResNet50).
    Parameters not taken from the file (a fresh head) are printed in one line.

  Raises:
    ValueError: unknown ``name``, a file that is not a Keras weight file or lacks layers of
      ``name`` (the missing layer names are listed), or shapes that do not match.
  """
  _check_name(name)
  if (not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3
      or input_shape[-1] != 3):
    raise ValueError(f"from_keras expects input_shape (height, width, 3); found {input_shape!r}")
  weights = read_keras_weights(path, name)
  layers = keras_layers(name)
  top = _TOP_LAYERS[name]
  missing = [layer for layer, _, _ in layers if layer not in weights and layer not in top]
  if missing:
    raise ValueError(
        f"{os.fspath(path)!r} is not a Keras {name} weight file: missing layers "
        f"{_names_list(missing)}; it has {_names_list(sorted(weights))}")
  has_top = all(layer in weights for layer in top)
  file_classes = weights["predictions"]["kernel"].shape[-1] if has_top else None
  if num_classes is None:
    num_classes = file_classes
  elif not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"from_keras expects num_classes None or an int >= 1; found {num_classes!r}")
  fresh_top = has_top and num_classes != file_classes
  skip = set(top) if not has_top else {"predictions"} if fresh_top else set()

  model = keras_model(name, num_classes)
  x = jnp.zeros((1, *input_shape), jnp.float32)
  init = functools.partial(model.init, train=False)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  shapes = jax.eval_shape(init, rng, x)
  # Shapes first, filled from the file below; what is left is initialised for real.
  params, stats = dict(shapes["params"]), dict(shapes.get("batch_stats", {}))
  for layer, kind, module in layers:
    if layer in skip or (layer in top and num_classes is None):
      continue
    values = weights[layer]
    want = _KINDS[kind][1]
    absent = [v for v in want if v not in values]
    if absent:
      raise ValueError(f"{os.fspath(path)!r}: layer {layer} lacks {absent}; found "
                       f"{sorted(values)}")
    p = _subtree(params, module)
    where = f"layer {layer}"
    if kind == "bn":
      s = _subtree(stats, module)
      p["scale"] = _assign(p["scale"], values["gamma"], f"{where} gamma")
      p["bias"] = _assign(p["bias"], values["beta"], f"{where} beta")
      s["mean"] = _assign(s["mean"], values["moving_mean"], f"{where} moving_mean")
      s["var"] = _assign(s["var"], values["moving_variance"], f"{where} moving_variance")
    else:
      for v in want:
        p[v] = _assign(p[v], values[v], f"{where} {v}")
  out, fresh = pretrained.init_missing(model, x, {"params": params, "batch_stats": stats}
                                       if stats else {"params": params}, rng)
  if fresh:
    print(f"from_keras({name}): not in {os.path.basename(os.fspath(path))}, freshly "
          f"initialised: {', '.join(f.removeprefix('params/') for f in fresh)}")
  return model, out


def _subtree(tree: dict, path: tuple[str, ...]) -> dict:
  """The nested dict at ``path``, made a plain mutable dict on the way."""
  for key in path:
    tree[key] = dict(tree[key])
    tree = tree[key]
  return tree
