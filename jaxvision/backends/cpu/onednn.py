"""2-D float32 convolutions on oneDNN for XLA:CPU, called through XLA FFI.

XLA:CPU runs convolutions with Eigen's spatial convolution, slower than oneDNN's (the library
TensorFlow and PyTorch use on CPU) on ResNet-18's shapes (figures in ``benchmarks/RESULTS.md``),
and the kernel gradient also needs its image in a batch-minor layout (see ``backends.cpu.conv``).
XLA in jaxlib 0.10 has its own oneDNN convolution rewrite compiled out, so this module calls
oneDNN itself: ``onednn_conv.cc`` defines three XLA FFI handlers (forward, input gradient,
kernel gradient) for NHWC activations and HWIO kernels, with no layout change of the
activations on either side.

oneDNN comes from PyPI's ``onednn-cpu-gomp`` (the library, GNU OpenMP threading) and
``onednn-devel-cpu-gomp`` (its headers), the optional extra ``jaxvision[onednn]`` (Linux
x86-64). The handlers are compiled on first use with the system C++ compiler (``$CXX``, else
``c++``) into ``$JAXVISION_CACHE_DIR`` (default ``~/.cache/jaxvision``), keyed by the source,
the jaxlib version and the oneDNN and compiler paths, under a file lock so parallel processes
build once. Without the wheels, one info line says so; when a compiler is missing or the
build fails, a warning says why. Either way ``backends.cpu.conv`` keeps XLA's convolutions.

Whether a traced convolution uses these handlers is decided by ``backends.cpu.context``
(``onednn_active``: inside ``enabled(onednn=True)``, under the rule of ``use_onednn``).
``JAXVISION_ONEDNN=0`` turns them off.

Values equal ``lax.conv_general_dilated`` and its gradients up to float summation order
(``tests/backends/cpu/test_onednn.py`` compares with NumPy in float64).
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import importlib.metadata
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ENV_SWITCH = "JAXVISION_ONEDNN"
CACHE_ENV = "JAXVISION_CACHE_DIR"
SOURCE = pathlib.Path(__file__).with_name("onednn_conv.cc")
TARGETS = {"forward": "JvConvForward", "backward_data": "JvConvBackwardData",
           "backward_weights": "JvConvBackwardWeights"}
_ABI_VERSION = 1  # JvConvVersion() in onednn_conv.cc
_BUILD_TIMEOUT_S = 600

_log = logging.getLogger(__name__)


class UnavailableError(RuntimeError):
  """oneDNN convolutions cannot be used here (the message says why)."""


class NotInstalledError(UnavailableError):
  """The optional oneDNN wheels (``jaxvision[onednn]``) are not installed."""


def enabled_by_env() -> bool:
  """False when ``JAXVISION_ONEDNN`` is 0/false/no."""
  return os.environ.get(ENV_SWITCH, "1").lower() not in ("0", "false", "no")


def _distribution_file(dist: str, suffix: str) -> pathlib.Path:
  try:
    files = importlib.metadata.distribution(dist).files or []
  except importlib.metadata.PackageNotFoundError:
    raise NotInstalledError(f"the {dist!r} package is not installed "
                            '(pip install "jaxvision[onednn]")') from None
  for f in files:
    path = pathlib.Path(f.locate()).resolve()  # RECORD paths may be relative ("../../lib").
    if path.as_posix().endswith("/" + suffix):
      return path
  raise UnavailableError(f"{dist!r} is installed but has no file ending in {suffix!r}")


def _cache_dir() -> pathlib.Path:
  root = os.environ.get(CACHE_ENV) or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxvision")
  return pathlib.Path(root)


def _build() -> pathlib.Path:
  """Compiles ``onednn_conv.cc`` (once per source/jaxlib/oneDNN/compiler) and returns it."""
  if not SOURCE.is_file():
    raise UnavailableError(f"source {SOURCE} is missing from the installed package")
  library = _distribution_file("onednn-cpu-gomp", "lib/libdnnl.so.3")
  header = _distribution_file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
  include = header.parents[2]
  compiler = shutil.which(os.environ.get("CXX", "c++"))
  if compiler is None:
    raise UnavailableError(f"no C++ compiler found (CXX={os.environ.get('CXX', 'c++')!r})")
  ffi_include = jax.ffi.include_dir()
  key = hashlib.sha256()
  for part in (SOURCE.read_bytes(), jax.__version__.encode(), importlib.metadata.version("jaxlib").encode(),
               str(library).encode(), str(include).encode(), ffi_include.encode(),
               compiler.encode()):
    key.update(part)
    key.update(b"\0")
  out_dir = _cache_dir() / f"onednn-{key.hexdigest()[:16]}"
  target = out_dir / "libjvconv.so"
  if target.is_file():
    return target
  out_dir.mkdir(parents=True, exist_ok=True)
  with open(out_dir / "build.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Another process may be building the same file.
    if target.is_file():
      return target
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{ffi_include}",
           f"-I{include}", str(SOURCE), "-o", tmp, f"-L{library.parent}",
           f"-l:{library.name}", f"-Wl,-rpath,{library.parent}"]
    try:
      done = subprocess.run(cmd, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
      os.unlink(tmp)
      raise UnavailableError(f"building {SOURCE.name} failed: {e}") from None
    if done.returncode != 0:
      os.unlink(tmp)
      raise UnavailableError(f"building {SOURCE.name} failed ({' '.join(cmd)}):\n"
                             f"{done.stderr[-4000:]}")
    os.replace(tmp, target)  # Atomic: readers see the whole library or none.
  return target


_load_lock = threading.Lock()
_loaded: tuple[ctypes.CDLL | None, str | None] | None = None


def _load() -> tuple[ctypes.CDLL | None, str | None]:
  """(library, None) once built, loaded and registered with XLA; (None, reason) otherwise.

  Runs once per process (under a lock: traces on several threads register the targets once).
  """
  global _loaded
  with _load_lock:
    if _loaded is None:
      _loaded = _build_and_register()
    return _loaded


def _build_and_register() -> tuple[ctypes.CDLL | None, str | None]:
  try:
    path = _build()
    lib = ctypes.CDLL(str(path))
    lib.JvConvVersion.restype = ctypes.c_int64
    if lib.JvConvVersion() != _ABI_VERSION:
      raise UnavailableError(f"{path} reports ABI {lib.JvConvVersion()}, "
                             f"expected {_ABI_VERSION}")
    for symbol in TARGETS.values():
      jax.ffi.register_ffi_target(symbol, jax.ffi.pycapsule(getattr(lib, symbol)),
                                  platform="cpu")
  except NotInstalledError as e:  # An optional extra: not worth a warning.
    _log.info("oneDNN convolutions not installed, using XLA's: %s", e)
    return None, str(e)
  except (UnavailableError, OSError, AttributeError) as e:
    reason = str(e)
    _log.warning("oneDNN convolutions unavailable, using XLA's: %s", reason)
    return None, reason
  return lib, None


def available() -> bool:
  """Whether the handlers are built and registered (builds them on the first call)."""
  return enabled_by_env() and _load()[0] is not None


def unavailable_reason() -> str | None:
  """Why :func:`available` is False (None when it is True)."""
  if not enabled_by_env():
    return f"{ENV_SWITCH}={os.environ[ENV_SWITCH]}"
  return _load()[1]


def supports(lhs: jax.Array, rhs: jax.Array) -> bool:
  """Whether a channels-last convolution of ``lhs`` with ``rhs`` fits the handlers."""
  return (lhs.ndim == 4 and rhs.ndim == 4 and lhs.dtype == jnp.float32
          and rhs.dtype == jnp.float32)


def _attrs(strides, padding) -> dict:
  return dict(strides=np.asarray(strides, np.int64),
              pad_lo=np.asarray([lo for lo, _ in padding], np.int64),
              pad_hi=np.asarray([hi for _, hi in padding], np.int64))


def _call(target: str, shape, operands, strides, padding):
  if not available():
    raise UnavailableError(f"oneDNN convolutions are unavailable: {unavailable_reason()}")
  out = jax.ShapeDtypeStruct(tuple(int(d) for d in shape), jnp.float32)
  return jax.ffi.ffi_call(TARGETS[target], out, vmap_method="sequential")(
      *operands, **_attrs(strides, padding))


def _check(lhs_shape, rhs_shape, name: str):
  if len(lhs_shape) != 4 or len(rhs_shape) != 4 or lhs_shape[-1] != rhs_shape[-2]:
    raise ValueError(f"{name}: expected x [B, H, W, C_in] and w [kh, kw, C_in, C_out]; "
                     f"found {tuple(lhs_shape)} and {tuple(rhs_shape)}")


def output_size(in_size, window, strides, padding) -> tuple[int, ...]:
  """Spatial output size of a convolution (floor, as XLA and oneDNN)."""
  return tuple((h + lo + hi - k) // s + 1
               for h, k, s, (lo, hi) in zip(in_size, window, strides, padding))


def forward(x: jax.Array, w: jax.Array, strides, padding) -> jax.Array:
  """``x [B, H, W, C_in]`` correlated with ``w [kh, kw, C_in, C_out]`` -> ``[B, Ho, Wo, C_out]``.

  ``padding``: explicit ``(lo, hi)`` pairs; float32 only (see :func:`supports`).
  """
  _check(x.shape, w.shape, "forward")
  out = output_size(x.shape[1:3], w.shape[:2], strides, padding)
  return _call("forward", (x.shape[0], *out, w.shape[3]), (x, w), strides, padding)


def backward_data(dy: jax.Array, w: jax.Array, in_size, strides, padding) -> jax.Array:
  """Input gradient ``[B, *in_size, C_in]`` of :func:`forward` from ``dy [B, Ho, Wo, C_out]``."""
  _check((dy.shape[0], *in_size, w.shape[2]), w.shape, "backward_data")
  return _call("backward_data", (dy.shape[0], *in_size, w.shape[2]), (dy, w), strides,
               padding)


def _strided_1x1_hazard(c_in: int, window, strides) -> bool:
  """Whether oneDNN 3.2's own kernel gradient is wrong for this geometry.

  Its 1x1 kernel gradient (``jit_1x1``) first copies a strided NHWC image into a unit-stride
  workspace, and with fewer input channels than its channel block (8 with AVX2, 16 with
  AVX-512) it writes past that workspace: the gradient is wrong (seen here on AVX2 with 1, 3 and
  5 channels) and the heap may be overwritten (oneDNN issue 6035, open). Any channel count that
  is not a multiple of 16 counts as a hazard, which keeps the usual widths on oneDNN's path.
  """
  return tuple(window) == (1, 1) and any(s > 1 for s in strides) and c_in % 16 != 0


def backward_weights(x: jax.Array, dy: jax.Array, window, strides, padding) -> jax.Array:
  """Kernel gradient ``[*window, C_in, C_out]`` of :func:`forward` from ``x`` and ``dy``.

  A strided 1x1 kernel reads only every ``s``-th pixel of the padded image, so where oneDNN's
  own strided 1x1 path is unsafe (:func:`_strided_1x1_hazard`) those pixels are gathered here
  and the gradient taken at unit stride: the same products and sums.
  """
  _check(x.shape, (*window, x.shape[3], dy.shape[3]), "backward_weights")
  if _strided_1x1_hazard(x.shape[3], window, strides):
    x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in padding),
                                            (0, 0, 0)))
    x = lax.slice(x, (0, 0, 0, 0), (x.shape[0], (dy.shape[1] - 1) * strides[0] + 1,
                                    (dy.shape[2] - 1) * strides[1] + 1, x.shape[3]),
                  (1, *strides, 1))
    strides, padding = (1, 1), ((0, 0), (0, 0))
  return _call("backward_weights", (*window, x.shape[3], dy.shape[3]), (x, dy), strides,
               padding)
