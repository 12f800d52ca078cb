"""``backends.cpu.onednn``: oneDNN's convolutions through XLA FFI equal a NumPy float64
convolution (written here from the definition, independent of XLA and oneDNN) in all three
directions; inside ``cpu.enabled()``, ``backends.cpu.conv`` routes 2-D float32 convolutions to
them on CPU and everything else to XLA; the build fails with a clear reason and leaves XLA's
convolutions in place; without the optional wheels one info line says so."""

import logging
import os
import pathlib
import platform
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxvision.backends import cpu
from jaxvision.backends.cpu import conv as cpu_conv
from jaxvision.backends.cpu import onednn
from jaxvision.training import jit, sharding

DN = ("NHWC", "HWIO", "NHWC")
REPO = pathlib.Path(__file__).resolve().parents[3]
LINUX_X86 = sys.platform == "linux" and platform.machine() == "x86_64"


def _wheels_installed() -> bool:
  try:
    onednn._distribution_file("onednn-cpu-gomp", "lib/libdnnl.so.3")
    return True
  except onednn.UnavailableError:
    return False


def test_available_where_the_package_supports_it():
  # The oneDNN wheels are the [onednn] extra on Linux x86-64, which `make test` installs, and
  # the machines have a C++ compiler: a missing build there is a failure, not a skip.
  if not LINUX_X86:
    pytest.skip(f"oneDNN wheels are only declared for Linux x86-64 ({sys.platform}, "
                f"{platform.machine()})")
  if not _wheels_installed():
    pytest.skip('the optional oneDNN wheels are not installed (pip install "jaxvision[onednn]")')
  assert onednn.available(), onednn.unavailable_reason()
  assert onednn.unavailable_reason() is None


needs_onednn = pytest.mark.skipif(not (LINUX_X86 and _wheels_installed()),
                                  reason="oneDNN wheels (the [onednn] extra): Linux x86-64 only")


def _np_conv(x, w, strides, padding):
  """float64 ``y[b, i, j, o] = sum x_pad[b, i*s + u, j*s + v, c] w[u, v, c, o]``."""
  (lo_h, hi_h), (lo_w, hi_w) = padding
  xp = np.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
  kh, kw = w.shape[:2]
  ho = (xp.shape[1] - kh) // strides[0] + 1
  wo = (xp.shape[2] - kw) // strides[1] + 1
  y = np.zeros((x.shape[0], ho, wo, w.shape[3]))
  for u in range(kh):
    for v in range(kw):
      patch = xp[:, u:u + strides[0] * (ho - 1) + 1:strides[0],
                 v:v + strides[1] * (wo - 1) + 1:strides[1], :]
      y += np.einsum("bijc,co->bijo", patch, w[u, v])
  return y


def _np_grads(x, w, dy, strides, padding):
  """float64 input and kernel gradients of :func:`_np_conv` for the cotangent ``dy``."""
  (lo_h, hi_h), (lo_w, hi_w) = padding
  xp = np.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
  dxp, dw = np.zeros_like(xp), np.zeros_like(w)
  ho, wo = dy.shape[1:3]
  for u in range(w.shape[0]):
    for v in range(w.shape[1]):
      rows = slice(u, u + strides[0] * (ho - 1) + 1, strides[0])
      cols = slice(v, v + strides[1] * (wo - 1) + 1, strides[1])
      dw[u, v] = np.einsum("bijc,bijo->co", xp[:, rows, cols, :], dy)
      dxp[:, rows, cols, :] += np.einsum("bijo,co->bijc", dy, w[u, v])
  return dxp[:, lo_h:lo_h + x.shape[1], lo_w:lo_w + x.shape[2], :], dw


CASES = [  # (x shape, kernel, strides, padding)
    ((2, 9, 7, 3), (3, 3), (1, 1), ((1, 1), (1, 1))),
    ((3, 10, 11, 4), (3, 3), (2, 2), ((0, 1), (1, 1))),
    # Strided 1x1 kernels with fewer channels than oneDNN's block take the gathered path
    # (oneDNN 3.2's own kernel gradient is wrong there on AVX2); 16 channels take oneDNN's.
    ((2, 8, 8, 5), (1, 1), (2, 2), ((0, 0), (0, 0))),
    ((2, 9, 8, 3), (1, 1), (2, 2), ((1, 0), (0, 1))),
    ((1, 7, 9, 1), (1, 1), (3, 2), ((0, 0), (0, 0))),
    ((2, 8, 8, 16), (1, 1), (2, 2), ((0, 0), (0, 0))),
    ((2, 15, 13, 3), (7, 7), (2, 2), ((3, 2), (3, 3))),
    ((1, 6, 7, 2), (4, 2), (2, 1), ((1, 2), (0, 1))),
    ((2, 5, 5, 16), (3, 3), (3, 3), ((0, 0), (0, 0))),  # stride drops the last rows
]


@needs_onednn
@pytest.mark.parametrize("shape,kernel,strides,padding", CASES)
def test_three_directions_match_numpy_float64(shape, kernel, strides, padding):
  rng = np.random.default_rng(0)
  x = rng.normal(size=shape)
  w = rng.normal(size=(*kernel, shape[-1], 6))
  y64 = _np_conv(x, w, strides, padding)
  dy = rng.normal(size=y64.shape)
  dx64, dw64 = _np_grads(x, w, dy, strides, padding)
  x32, w32, dy32 = (jnp.asarray(a, jnp.float32) for a in (x, w, dy))
  y = jax.jit(onednn.forward, static_argnums=(2, 3))(x32, w32, strides, padding)
  dx = jax.jit(onednn.backward_data, static_argnums=(2, 3, 4))(dy32, w32, shape[1:3], strides,
                                                                 padding)
  dw = jax.jit(onednn.backward_weights, static_argnums=(2, 3, 4))(x32, dy32, kernel, strides,
                                                                    padding)
  for ours, ref in ((y, y64), (dx, dx64), (dw, dw64)):
    assert ours.shape == ref.shape and ours.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-4)


def _targets(fn, *args):
  text = jax.jit(fn).lower(*args).as_text()
  return {name: text.count(name) for name in onednn.TARGETS.values()}


@needs_onednn
def test_backend_conv_uses_onednn_for_float32_on_cpu_and_matches_float64():
  rng = np.random.default_rng(1)
  x, w = rng.normal(size=(2, 11, 10, 3)), rng.normal(size=(3, 3, 3, 4))

  def loss(conv, x, w):
    y = conv(x, w, (2, 2), "SAME", dimension_numbers=DN)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size)

  ours = jax.value_and_grad(lambda x, w: loss(cpu_conv.conv_general_dilated, x, w), (0, 1))
  x32, w32 = jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)
  with cpu.enabled():
    assert _targets(ours, x32, w32) == {"JvConvForward": 1, "JvConvBackwardData": 1,
                                        "JvConvBackwardWeights": 1}
    value, (dx, dw) = jax.jit(ours)(x32, w32)
  with jax.enable_x64(True):
    ref = jax.value_and_grad(lambda x, w: loss(lax.conv_general_dilated, x, w), (0, 1))
    ref_value, (ref_dx, ref_dw) = ref(jnp.asarray(x), jnp.asarray(w))
  np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, ref_dx, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dw, ref_dw, rtol=1e-4, atol=1e-5)


@needs_onednn
def test_other_cases_stay_on_xla():
  x32, w32 = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))

  def conv(x, w):
    return cpu_conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)

  none = dict.fromkeys(onednn.TARGETS.values(), 0)
  with cpu.enabled(onednn=False):  # (a function of its own: jit caches a trace per function)
    assert _targets(lambda x, w: conv(x, w), x32, w32) == none
  with cpu.enabled():
    assert _targets(lambda x, w: conv(x, w), x32, w32)["JvConvForward"] == 1
    with cpu.enabled(onednn=False):  # an inner block turns it off, and no inner one back on
      with cpu.enabled():
        assert _targets(lambda x, w: conv(x, w), x32, w32) == none
  assert _targets(conv, x32, w32) == none  # outside the context: never oneDNN
  with cpu.enabled():
    assert _targets(conv, x32.astype(jnp.bfloat16), w32.astype(jnp.bfloat16)) == none
    with jax.enable_x64(True):
      assert _targets(conv, jnp.ones((2, 8, 8, 3), jnp.float64),
                      jnp.ones((3, 3, 3, 4), jnp.float64)) == none
    conv1d = lambda x, w: cpu_conv.conv_general_dilated(x, w, (1,), "SAME",
                                                        dimension_numbers=("NWC", "WIO", "NWC"))
    assert _targets(conv1d, jnp.ones((2, 8, 3)), jnp.ones((3, 3, 4))) == none
    # GPU/TPU lowerings of the same trace keep XLA's convolution (lowered without the device).
    traced = jax.jit(lambda x, w: conv(x, w)).trace(x32, w32)
  for platform_name in ("cuda", "tpu"):
    text = traced.lower(lowering_platforms=(platform_name,)).as_text()
    assert "JvConv" not in text and "stablehlo.convolution" in text, platform_name


@needs_onednn
def test_env_switch_turns_it_off(monkeypatch):
  monkeypatch.setenv(onednn.ENV_SWITCH, "0")
  with cpu.enabled():
    assert not onednn.available() and not cpu.onednn_active()
  assert not cpu.use_onednn(sharding.make_mesh(1), requested=True)
  assert onednn.unavailable_reason() == f"{onednn.ENV_SWITCH}=0"


@needs_onednn
def test_multi_device_steps_are_traced_with_xla_convolutions():
  # XLA's SPMD partitioner would gather a sharded batch for a custom call, so steps for a
  # mesh of several devices keep XLA's convolutions; a one-device mesh gets oneDNN's.
  conv = lambda state, batch: cpu_conv.conv_general_dilated(batch, state, (1, 1), "SAME",
                                                            dimension_numbers=DN)
  w, x = jnp.ones((3, 3, 3, 4)), np.ones((8, 6, 6, 3), np.float32)
  for devices, expected in ((1, 1), (8, 0)):
    mesh = sharding.make_mesh(devices)
    assert cpu.use_onednn(mesh, requested=True) == (devices == 1)
    text = jit.jit_eval_step(conv, mesh).lower(
        w, sharding.shard_batch({"x": x}, mesh)["x"]).as_text()
    assert text.count("JvConvForward") == expected, devices


@needs_onednn
def test_inside_scan_and_vmap():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(3, 2, 6, 6, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32)
  conv = lambda x: cpu_conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)
  with cpu.enabled():
    scanned = jax.jit(lambda xs: lax.scan(lambda c, x: (c, conv(x)), 0, xs)[1])(x)
    mapped = jax.jit(jax.vmap(conv))(x)
    assert "JvConvForward" in jax.jit(jax.vmap(conv)).lower(x).as_text()
  for i in range(3):
    ref = _np_conv(np.asarray(x[i], np.float64), np.asarray(w, np.float64), (1, 1),
                   ((1, 1), (1, 1)))
    np.testing.assert_allclose(scanned[i], ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(mapped[i], ref, rtol=1e-4, atol=1e-4)


def test_wrong_shapes_raise_clear_errors():
  with pytest.raises(ValueError, match=r"expected x \[B, H, W, C_in\] and w .* found"):
    onednn.forward(jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 5, 4)), (1, 1), ((1, 1), (1, 1)))
  with pytest.raises(ValueError, match="expected x"):
    onednn.forward(jnp.ones((8, 8, 3)), jnp.ones((3, 3, 3, 4)), (1, 1), ((1, 1), (1, 1)))


@needs_onednn
def test_build_failures_say_why(monkeypatch, tmp_path):
  monkeypatch.setenv(onednn.CACHE_ENV, str(tmp_path))
  monkeypatch.setenv("CXX", "no-such-compiler-jaxvision")
  with pytest.raises(onednn.UnavailableError, match="no C.. compiler found"):
    onednn._build()
  monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
  with pytest.raises(onednn.UnavailableError, match="building onednn_conv.cc failed"):
    onednn._build()
  assert not list(tmp_path.rglob("*.so"))  # nothing half-written left behind


@needs_onednn
def test_parallel_builds_share_one_library(tmp_path):
  # Two processes (as pytest-xdist workers) building into an empty cache: one compiles under
  # the lock, the other waits and loads the same file; both then convolve correctly.
  script = textwrap.dedent("""
      import jax.numpy as jnp, numpy as np
      from jaxvision.backends.cpu import onednn
      path = onednn._build()
      assert onednn.available(), onednn.unavailable_reason()
      y = onednn.forward(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 1)), (1, 1), ((1, 1),) * 2)
      assert float(y[0, 1, 1, 0]) == 18.0 and float(y[0, 0, 0, 0]) == 8.0, y
      print(path)
  """)
  env = {**os.environ, onednn.CACHE_ENV: str(tmp_path), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
         "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
  procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  paths = {out.strip().splitlines()[-1] for out, _ in outs}
  assert len(paths) == 1 and len(list(tmp_path.rglob("*.so"))) == 1, paths


def test_missing_wheels_give_one_info_line_and_xla_convolutions(monkeypatch, caplog):
  # The wheels are an optional extra: their absence is logged once at INFO, not warned about.
  def not_installed(dist, suffix):
    raise onednn.NotInstalledError(f"the {dist!r} package is not installed")

  monkeypatch.setattr(onednn, "_distribution_file", not_installed)
  with caplog.at_level(logging.INFO, logger=onednn.__name__):
    assert onednn._build_and_register() == (
        None, "the 'onednn-cpu-gomp' package is not installed")
  records = [r for r in caplog.records if r.name == onednn.__name__]
  assert [r.levelno for r in records] == [logging.INFO], records
  assert "not installed, using XLA's" in records[0].getMessage()
  monkeypatch.setattr(onednn, "_loaded", (None, "not installed"))
  with cpu.enabled():
    assert not cpu.onednn_active()
    text = jax.jit(lambda x, w: cpu_conv.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=DN)).lower(
            jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))).as_text()
  assert "JvConv" not in text and "stablehlo.convolution" in text
